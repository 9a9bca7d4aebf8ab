// q4_1 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales d (8 words), their f16 minimums m (8 words), then word c of row r's 16
// quant bytes at word 16 + c * 16 + r. Nibbles as q4_0; value d q + m.
const BLOCK_WORDS: u32 = 80u;  // 16 rows * 20 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b, nb, 0u), x16_field(row, b, nb, 1u));
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let q = w[block_base(row, b, nb) + 16u + (i % 4u) * 16u + row % 16u] >> (4u * (i / 4u));
    return vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
}
