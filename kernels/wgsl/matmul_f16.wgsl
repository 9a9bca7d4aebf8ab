// f16 weights, rows layout: element k of row r is half r * K + k, two to a word.
fn weights(row: u32, b: u32, nb: u32) -> array<f32, 32> {
    let base = (row * nb + b) * 16u;
    var v: array<f32, 32>;
    for (var i = 0u; i < 16u; i++) {
        let pair = unpack2x16float(w[base + i]);
        v[2u * i] = pair.x;
        v[2u * i + 1u] = pair.y;
    }
    return v;
}
