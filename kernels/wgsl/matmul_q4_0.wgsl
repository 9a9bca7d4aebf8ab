// q4_0 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales (8 words), then word c of row r's 16 quant bytes at word 8 + c * 16 + r.
// Byte j of a block holds element j in its low nibble and j + 16 in its high one: values
// 4i .. 4i + 3 are word i's low nibbles for i < 4, word i - 4's high ones after. Value d (q - 8).
const BLOCK_WORDS: u32 = 72u;  // 16 rows * 18 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b, nb, 0u), 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let q = w[block_base(row, b, nb) + 8u + (i % 4u) * 16u + row % 16u] >> (4u * (i / 4u));
    return vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u)) - 8.0;
}
