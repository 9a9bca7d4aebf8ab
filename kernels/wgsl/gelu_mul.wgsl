// gate[i] = gelu(gate[i]) * up[i], in place, GELU in its tanh form (Gemma's GeGLU), as the
// CPU computes it: 0.5 * g * (1 + tanh(sqrt(2/pi) * (g + 0.044715 g^3))) * up.
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
        // tanh's argument clamped: some backends compute tanh from exp and give NaN past ~44;
        // tanh(10) is 1.0 in f32 already, so the clamp changes no result
        let u = clamp(0.7978845608028654 * (g + 0.044715 * g * g * g), -10.0, 10.0);
        gate[i] = 0.5 * g * (1.0 + tanh(u)) * up[i];
    }
}
