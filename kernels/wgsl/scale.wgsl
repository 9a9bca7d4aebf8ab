// x[i] *= s, in place: the embeddings (Gemma 3, Granite), a sublayer's output before its
// residual add (Granite) and the logits (Granite), each as its own f32 product, as the CPU
// rounds it.
struct Params {
    row: u32,        // elements per token
    from_first: u32, // 1: x holds only the tokens from step.first on (the logits)
    s: f32,
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * 65535u * 64u;
    if (i < (step.tokens - p.from_first * step.first) * p.row) {
        x[i] *= p.s;
    }
}
