// q2_k weights, re-laid into the X16 layout as they go up (quant/layout.py; files keep q2_k in
// rows): per group of 16 rows and super-block of 256 values, the rows' f16 d (8 words) and dmin
// (8 words), then word c of a row's other bytes at word 16 + c * 16 + r: words 0 .. 3 the 16
// bytes of (scale, min) nibbles, 4 .. 19 qs. The matmul's block b of 32 values is c = b % 8 =
// 4h + k of its super-block: values 4i .. 4i + 3 are bits 2k of qs word 4 + 8h + i, in sub-block
// j = 2c + i / 4, whose byte j holds sc (low nibble) and m (quant/kquants.py). Each half of the
// block has its own min, which the matmul's one (scale, min) per block cannot carry: the quants
// are the values themselves, (d sc) q - dmin m (the reference's f32 arithmetic: both products
// exact, one rounding), with (1, 0) as the block's scale.
const BLOCK_WORDS: u32 = 336u;  // 16 rows * 84 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(1.0, 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let c = b % 8u;
    let q = (x16_word(row, b / 8u, nb / 8u, 2u, 4u + 8u * (c / 4u) + i) >> (2u * (c % 4u))) & 0x03030303u;
    let j = 2u * c + i / 4u;  // the sub-block of 16
    let sm = (x16_word(row, b / 8u, nb / 8u, 2u, j / 4u) >> (8u * (j % 4u))) & 255u;
    let d = x16_field(row, b / 8u, nb / 8u, 0u) * f32(sm & 15u);
    return d * byte_values(q) - x16_field(row, b / 8u, nb / 8u, 1u) * f32(sm >> 4u);
}
