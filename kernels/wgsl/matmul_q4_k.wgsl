// q4_k weights in the X16 layout (quant/layout.py): per group of 16 rows and super-block of
// 256 values, the rows' f16 d (8 words) and dmin (8 words), then word c of a row's other bytes
// at word 16 + c * 16 + r: words 0 .. 2 the packed 6-bit scales and mins, 3 .. 34 the quants.
// The matmul's block b of 32 values is sub-block s = b % 8 of super-block b / 8: its values
// 4i .. 4i + 3 are nibble s % 2 of quant word 8 (s / 2) + i. Value (d sc) q - dmin m, exactly
// the reference's f32 arithmetic (both products are exact).
const BLOCK_WORDS: u32 = 576u;  // 16 rows * 144 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    let sm = k_scale_min(row, b / 8u, nb / 8u, b % 8u);
    return vec2<f32>(x16_field(row, b / 8u, nb / 8u, 0u) * sm.x, -(x16_field(row, b / 8u, nb / 8u, 1u) * sm.y));
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let s = b % 8u;
    return byte_values((x16_word(row, b / 8u, nb / 8u, 2u, 3u + 8u * (s / 2u) + i) >> (4u * (s % 2u))) & 0x0f0f0f0fu);
}
