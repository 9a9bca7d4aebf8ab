// q8_0 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales (8 words), then word c of row r's 32 int8 quants at word 8 + c * 16 + r.
const BLOCK_WORDS: u32 = 136u;  // 16 rows * 34 bytes / 4

fn weights(row: u32, b: u32, nb: u32) -> array<f32, 32> {
    let r = row % 16u;
    let base = ((row / 16u) * nb + b) * BLOCK_WORDS;
    let d = unpack2x16float(w[base + r / 2u])[r % 2u];
    var v: array<f32, 32>;
    for (var c = 0u; c < 8u; c++) {
        let q = i32(w[base + 8u + c * 16u + r]);
        for (var j = 0u; j < 4u; j++) {
            v[c * 4u + j] = d * f32(extractBits(q, j * 8u, 8u));  // sign-extends
        }
    }
    return v;
}
