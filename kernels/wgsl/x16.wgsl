// Shared by the stubs of the x16 weight types (quant/layout.py), each of which defines
// BLOCK_WORDS: where block b of a row's group of 16 rows starts, in words, and one of the
// row's f16 fields of that block (0: d; 1: m, for q4_1), which come first, 16 to a field.
// For the k-quants a block is a super-block of 256 values: their stubs pass b / 8 of nb / 8.
fn block_base(row: u32, b: u32, nb: u32) -> u32 {
    return ((row / 16u) * nb + b) * BLOCK_WORDS;
}

fn x16_field(row: u32, b: u32, nb: u32, field: u32) -> f32 {
    let r = row % 16u;
    return unpack2x16float(w[block_base(row, b, nb) + field * 8u + r / 2u])[r % 2u];
}

// Word c of the row's other bytes in block b, after its `fields` f16 fields.
fn x16_word(row: u32, b: u32, nb: u32, fields: u32, c: u32) -> u32 {
    return w[block_base(row, b, nb) + fields * 8u + c * 16u + row % 16u];
}

// The four bytes of v as values (each a quant the stub has assembled in its byte).
fn byte_values(v: u32) -> vec4<f32> {
    return vec4<f32>(f32(v & 255u), f32((v >> 8u) & 255u), f32((v >> 16u) & 255u), f32(v >> 24u));
}

// q5_0 / q5_1: bits 0 .. 3 of h as bit 4 of each of four bytes (the fifth bits of four values).
fn fifth_bits(h: u32) -> u32 {
    return ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
}

// q4_k / q5_k: sub-block s's 6-bit (scale, min) from the 12 packed bytes a[4] b[4] c[4] that are
// words 0 .. 2 after the two f16 fields (quant/kquants.py, _k_scales).
fn k_scale_min(row: u32, b: u32, nb: u32, s: u32) -> vec2<f32> {
    let shift = 8u * (s % 4u);
    let a = (x16_word(row, b, nb, 2u, 0u) >> shift) & 255u;
    let m = (x16_word(row, b, nb, 2u, 1u) >> shift) & 255u;
    if (s < 4u) {
        return vec2<f32>(f32(a & 63u), f32(m & 63u));
    }
    let c = (x16_word(row, b, nb, 2u, 2u) >> shift) & 255u;
    return vec2<f32>(f32((c & 15u) | ((a >> 6u) << 4u)), f32((c >> 4u) | ((m >> 6u) << 4u)));
}
