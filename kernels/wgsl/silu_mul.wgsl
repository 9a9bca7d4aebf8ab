// gate[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up, in place.
struct Params {
    row: u32,  // elements per token
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i < step.tokens * p.row) {
        let g = gate[i];
        gate[i] = g / (1.0 + exp(-g)) * up[i];
    }
}
