// q4_0 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales (8 words), then word c of row r's 16 quant bytes at word 8 + c * 16 + r.
// Byte j of a block holds element j in its low nibble and j + 16 in its high one; value d (q - 8).
const BLOCK_WORDS: u32 = 72u;  // 16 rows * 18 bytes / 4

fn weights(row: u32, b: u32, nb: u32) -> array<f32, 32> {
    let r = row % 16u;
    let base = ((row / 16u) * nb + b) * BLOCK_WORDS;
    let d = unpack2x16float(w[base + r / 2u])[r % 2u];
    var v: array<f32, 32>;
    for (var c = 0u; c < 4u; c++) {
        let q = w[base + 8u + c * 16u + r];
        for (var j = 0u; j < 4u; j++) {
            v[c * 4u + j] = d * (f32(extractBits(q, j * 8u, 4u)) - 8.0);
            v[c * 4u + j + 16u] = d * (f32(extractBits(q, j * 8u + 4u, 4u)) - 8.0);
        }
    }
    return v;
}
