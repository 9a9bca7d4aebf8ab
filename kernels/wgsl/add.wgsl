// x[i] += y[i % n]: the residual add (n = the size of x) and a bias added to every token's
// row (n = the row length).
struct Params {
    row: u32,  // elements per token in x
    n: u32,    // elements of y
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i < step.tokens * p.row) {
        x[i] += y[i % p.n];
    }
}
