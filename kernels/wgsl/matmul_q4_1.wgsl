// q4_1 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales d (8 words), their f16 minimums m (8 words), then word c of row r's 16
// quant bytes at word 16 + c * 16 + r. Nibbles as q4_0; value d q + m.
const BLOCK_WORDS: u32 = 80u;  // 16 rows * 20 bytes / 4

fn weights(row: u32, b: u32, nb: u32) -> array<f32, 32> {
    let r = row % 16u;
    let base = ((row / 16u) * nb + b) * BLOCK_WORDS;
    let d = unpack2x16float(w[base + r / 2u])[r % 2u];
    let m = unpack2x16float(w[base + 8u + r / 2u])[r % 2u];
    var v: array<f32, 32>;
    for (var c = 0u; c < 4u; c++) {
        let q = w[base + 16u + c * 16u + r];
        for (var j = 0u; j < 4u; j++) {
            v[c * 4u + j] = d * f32(extractBits(q, j * 8u, 4u)) + m;
            v[c * 4u + j + 16u] = d * f32(extractBits(q, j * 8u + 4u, 4u)) + m;
        }
    }
    return v;
}
