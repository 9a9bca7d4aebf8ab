// out[t] = row ids[t] of the embedding table, dequantised by the weight format's stub
// (matmul_<type>.wgsl): d * q + m, as for a matmul. One workgroup per token; a table split
// over several bindings is run once per binding, each writing the tokens whose row it holds.
struct Params {
    k: u32,    // row length
    rows: u32, // rows in this binding of w
    row0: u32, // its first row in the whole table
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;               // [tokens]
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;  // [tokens, k / 4]

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.x;
    if (t >= step.tokens || ids[t] < p.row0 || ids[t] >= p.row0 + p.rows) {
        return;
    }
    let row = ids[t] - p.row0;
    let nb = p.k / 32u;
    for (var b = li; b < nb; b += 64u) {
        let dm = scale(row, b, nb);
        for (var i = 0u; i < 8u; i++) {
            out[(t * p.k + b * 32u) / 4u + i] = dm.x * quants(row, b, nb, i) + dm.y;
        }
    }
}
