// q8_0 weights in the X16 layout (quant/layout.py): per group of 16 rows and block, the 16
// rows' f16 scales (8 words), then word c of row r's 32 int8 quants at word 8 + c * 16 + r.
const BLOCK_WORDS: u32 = 136u;  // 16 rows * 34 bytes / 4

fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(x16_field(row, b, nb, 0u), 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let q = i32(w[block_base(row, b, nb) + 8u + i * 16u + row % 16u]);
    return vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)),  // sign-extended
                     f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
}
