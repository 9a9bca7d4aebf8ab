// q5_k weights in the X16 layout (quant/layout.py): q4_k's, with the 32 bytes of fifth bits
// between the scales and the nibbles: words 0 .. 2 scales and mins, 3 .. 10 qh, 11 .. 42 the
// nibbles. Value 32s + l's fifth bit is bit s of qh byte l (sub-block s = b % 8, l = 4i ..).
const BLOCK_WORDS: u32 = 704u;  // 16 rows * 176 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    let sm = k_scale_min(row, b / 8u, nb / 8u, b % 8u);
    return vec2<f32>(x16_field(row, b / 8u, nb / 8u, 0u) * sm.x, -(x16_field(row, b / 8u, nb / 8u, 1u) * sm.y));
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let s = b % 8u;
    let lo = (x16_word(row, b / 8u, nb / 8u, 2u, 11u + 8u * (s / 2u) + i) >> (4u * (s % 2u))) & 0x0f0f0f0fu;
    let hi = ((x16_word(row, b / 8u, nb / 8u, 2u, 3u + i) >> s) & 0x01010101u) << 4u;
    return byte_values(lo | hi);
}
