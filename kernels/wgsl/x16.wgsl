// Shared by the stubs of the x16 weight types (quant/layout.py), each of which defines
// BLOCK_WORDS: where block b of a row's group of 16 rows starts, in words, and one of the
// row's f16 fields of that block (0: d; 1: m, for q4_1), which come first, 16 to a field.
fn block_base(row: u32, b: u32, nb: u32) -> u32 {
    return ((row / 16u) * nb + b) * BLOCK_WORDS;
}

fn x16_field(row: u32, b: u32, nb: u32, field: u32) -> f32 {
    let r = row % 16u;
    return unpack2x16float(w[block_base(row, b, nb) + field * 8u + r / 2u])[r % 2u];
}
