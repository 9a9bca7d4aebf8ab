// q5_0 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales (8 words), then word c of row r's other 20 bytes at word 8 + c * 16 + r:
// word 0 is qh (bit j: the fifth bit of element j), words 1 .. 4 the nibbles as q4_0's (values
// 4i .. 4i + 3: word 1 + i % 4, low nibbles for i < 4, high after). Value d (q - 16).
const BLOCK_WORDS: u32 = 88u;  // 16 rows * 22 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b, nb, 0u), 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let lo = (x16_word(row, b, nb, 1u, 1u + i % 4u) >> (4u * (i / 4u))) & 0x0f0f0f0fu;
    return byte_values(lo | fifth_bits(x16_word(row, b, nb, 1u, 0u) >> (4u * i))) - 16.0;
}
