// q3_k weights, re-laid into the X16 layout as they go up (quant/layout.py; files keep q3_k in
// rows): per group of 16 rows and super-block of 256 values, the rows' f16 d (8 words), then
// word c of a row's other bytes at word 8 + c * 16 + r: words 0 .. 7 hmask, 8 .. 23 qs, 24 .. 26
// the 12 bytes of packed 6-bit scales. The matmul's block b of 32 values is c = b % 8 = 4h + k of
// its super-block: values 4i .. 4i + 3 have their low 2 bits at bit 2k of qs word 8 + 8h + i and
// their third at bit c of hmask word i (a 3-bit q, value q - 4: a clear bit subtracts 4), and
// sub-block j = 2c + i / 4's scale sc - 32 (sc's low 4 bits nibble j / 8 of scales byte j % 8, its
// top 2 bits 2 (j / 4) of byte 8 + j % 4; quant/kquants.py). As in q6_k's stub the scale is taken
// into the quant, (sc - 32) (q - 4) (a whole number of at most 128: exact), with d as the
// block's scale: d ((sc - 32) (q - 4)) is the reference's (d (sc - 32)) (q - 4) exactly.
const BLOCK_WORDS: u32 = 440u;  // 16 rows * 110 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b / 8u, nb / 8u, 0u), 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let c = b % 8u;
    let lo = (x16_word(row, b / 8u, nb / 8u, 1u, 8u + 8u * (c / 4u) + i) >> (2u * (c % 4u))) & 0x03030303u;
    let hi = ((x16_word(row, b / 8u, nb / 8u, 1u, i) >> c) & 0x01010101u) << 2u;
    let j = 2u * c + i / 4u;  // the sub-block of 16
    let sc_lo = (x16_word(row, b / 8u, nb / 8u, 1u, 24u + (j % 8u) / 4u) >> (8u * (j % 4u) + 4u * (j / 8u))) & 15u;
    let sc_hi = (x16_word(row, b / 8u, nb / 8u, 1u, 26u) >> (8u * (j % 4u) + 2u * (j / 4u))) & 3u;
    return (byte_values(lo | hi) - 4.0) * (f32(sc_lo | (sc_hi << 4u)) - 32.0);
}
