// q6_k weights in the X16 layout (quant/layout.py): per group of 16 rows and super-block of
// 256 values, the rows' f16 d (8 words), then word c of a row's other bytes at word 8 + c * 16
// + r: words 0 .. 31 ql, 32 .. 47 qh, 48 .. 51 the 16 int8 sub-block scales. The matmul's
// block b of 32 values is c = b % 8 = 4h + k of its super-block: values 4i .. 4i + 3 have
// their low 4 bits in nibble k / 2 of ql word 16h + 8 (k % 2) + i and their high 2 bits at
// bit 2k of qh word 8h + i (quant/kquants.py), and sub-block 2c + i / 4's scale. The scale is
// taken into the quant, sc (q - 32) (an integer under 2^13: exact), with d as the block's
// scale: d (sc (q - 32)) is the reference's (d sc) (q - 32) exactly, every product exact.
const BLOCK_WORDS: u32 = 840u;  // 16 rows * 210 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b / 8u, nb / 8u, 0u), 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let c = b % 8u;
    let h = c / 4u;
    let k = c % 4u;
    let lo = (x16_word(row, b / 8u, nb / 8u, 1u, 16u * h + 8u * (k % 2u) + i) >> (4u * (k / 2u))) & 0x0f0f0f0fu;
    let hi = ((x16_word(row, b / 8u, nb / 8u, 1u, 32u + 8u * h + i) >> (2u * k)) & 0x03030303u) << 4u;
    let j = 2u * c + i / 4u;  // the sub-block of 16
    let sc = f32(extractBits(i32(x16_word(row, b / 8u, nb / 8u, 1u, 48u + j / 4u)), 8u * (j % 4u), 8u));
    return (byte_values(lo | hi) - 32.0) * sc;
}
