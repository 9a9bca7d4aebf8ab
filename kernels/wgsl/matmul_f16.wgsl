// f16 weights, rows layout: element k of row r is half r * K + k, two to a word; no scale.
fn scale(row: u32, b: u32, nb: u32) -> vec2<f32> {
    return vec2<f32>(1.0, 0.0);
}

fn quants(row: u32, b: u32, nb: u32, i: u32) -> vec4<f32> {
    let base = (row * nb + b) * 16u + 2u * i;
    return vec4<f32>(unpack2x16float(w[base]), unpack2x16float(w[base + 1u]));
}
