// out[t] = x[row0 + t] / sqrt(mean(x[row0 + t]^2) + eps) * weight: one workgroup per token,
// the sum of squares reduced in workgroup memory.
struct Params {
    d: u32,          // row length
    eps: f32,
    from_first: u32, // 1: only the tokens from step.first on (the final norm)
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> x: array<f32>;          // [tokens, d]
@group(0) @binding(3) var<storage, read> weight: array<f32>;     // [d]
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // [tokens - first, d]

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let t = wg.x;  // an output row; dispatched for every token a step can have
    let skip = p.from_first * step.first;
    let live = t + skip < step.tokens;
    let xo = (t + skip) * p.d;
    var s = 0.0;
    for (var i = li; i < p.d && live; i += 64u) {
        s += x[xo + i] * x[xo + i];
    }
    part[li] = s;
    workgroupBarrier();
    for (var half = 32u; half > 0u; half >>= 1u) {
        if (li < half) {
            part[li] += part[li + half];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(part[0] / f32(p.d) + p.eps);
    for (var i = li; i < p.d && live; i += 64u) {
        out[t * p.d + i] = x[xo + i] * scale * weight[i];
    }
}
