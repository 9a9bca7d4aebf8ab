// q5_1 weights in the X16 layout (quant/layout.py): q5_0's, with the 16 rows' f16 minimums m
// (8 words) after their scales d, so the other bytes start at word 16. Value d q + m.
const BLOCK_WORDS: u32 = 96u;  // 16 rows * 24 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b, nb, 0u), x16_field(row, b, nb, 1u));
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let lo = (x16_word(row, b, nb, 2u, 1u + i % 4u) >> (4u * (i / 4u))) & 0x0f0f0f0fu;
    return byte_values(lo | fifth_bits(x16_word(row, b, nb, 2u, 0u) >> (4u * i)));
}
