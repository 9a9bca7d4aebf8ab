// iq4_nl weights in the X16 layout (quant/layout.py): q4_0's (the 16 rows' f16 scales, 8 words,
// then word c of row r's 16 quant bytes at word 8 + c * 16 + r; values 4i .. 4i + 3 are word
// i % 4's low nibbles for i < 4, its high ones after), each nibble an index into GGML's 16 int8
// levels (kernels/include/llmrun.h llmr_iq4_nl_values). Value d * level: one rounding, the
// reference's f32 value.
const BLOCK_WORDS: u32 = 72u;  // 16 rows * 18 bytes / 4
const IQ4_NL_LEVELS = array<f32, 16>(-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                                     1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b, nb, 0u), 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let q = x16_word(row, b, nb, 1u, i % 4u) >> (4u * (i / 4u));
    return vec4<f32>(IQ4_NL_LEVELS[q & 15u], IQ4_NL_LEVELS[(q >> 8u) & 15u], IQ4_NL_LEVELS[(q >> 16u) & 15u],
                     IQ4_NL_LEVELS[(q >> 24u) & 15u]);
}
