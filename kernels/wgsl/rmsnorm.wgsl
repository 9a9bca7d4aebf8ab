// out[r] = x[skip + r] / sqrt(mean(x[skip + r]^2) + eps) * weight: one workgroup of 256 per
// row (a decode step's norm is one row: the whole GPU waits on one workgroup, so it takes as
// many invocations as it may), the sum of squares reduced in workgroup memory. A token has `per_token` rows: 1 for the residual
// stream's norms, the heads of q or of k for the per-head q/k norms (Qwen3, Gemma 3), whose
// T * heads rows may pass 65,535 workgroups, so rows go on in y.
struct Params {
    d: u32,          // row length
    eps: f32,
    from_first: u32, // 1: only the tokens from step.first on (the final norm)
    per_token: u32,  // rows per token
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // [tokens * per_token, d]
@group(0) @binding(3) var<storage, read> weight: array<f32>;     // [d]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [(tokens - first) * per_token, d]

const THREADS: u32 = 256u;
var<workgroup> part: array<f32, THREADS>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.x + wg.y * 65535u;  // an output row; dispatched for every row a step can have
    let skip = p.from_first * step.first * p.per_token;
    let live = t + skip < step.tokens * p.per_token;
    let xo = (t + skip) * p.d;
    var s = 0.0;
    for (var i = li; i < p.d && live; i += THREADS) {
        s += x[xo + i] * x[xo + i];
    }
    part[li] = s;
    workgroupBarrier();
    for (var half = THREADS / 2u; half > 0u; half >>= 1u) {
        if (li < half) {
            part[li] += part[li + half];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(part[0] / f32(p.d) + p.eps);
    for (var i = li; i < p.d && live; i += THREADS) {
        out[t * p.d + i] = x[xo + i] * scale * weight[i];
    }
}
