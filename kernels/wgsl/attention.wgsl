// Causal grouped-query attention for a chunk of a step's tokens, from t0: one workgroup per
// (head, token); token t (position n_past + t) sees cache positions 0 ..= n_past + t, or the
// last `window` of them in a sliding-window layer (Mistral, Gemma 3). Scores go to a scratch
// row of the context's length, so any context fits; max and sum are reduced in workgroup
// memory.
struct Params {
    heads: u32,
    kv_heads: u32,
    hd: u32,
    ctx: u32,    // the cache's positions: a scratch row's length
    t0: u32,     // this dispatch's first token
    scale: f32,  // the family's (Gemma 3, Granite), else 1 / sqrt(hd)
    window: u32, // positions a token sees back, itself included; 0: all
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> q: array<f32>;              // [tokens, heads, hd]
@group(0) @binding(3) var<storage, read> kc: array<f32>;             // [ctx, kv_heads, hd]
@group(0) @binding(4) var<storage, read> vc: array<f32>;             // [ctx, kv_heads, hd]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;      // [tokens, heads, hd]
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;   // [chunk, heads, ctx]

var<workgroup> part: array<f32, 64>;

fn reduce(li: u32, is_max: bool) -> f32 {
    workgroupBarrier();
    for (var half = 32u; half > 0u; half >>= 1u) {
        if (li < half) {
            part[li] = select(part[li] + part[li + half], max(part[li], part[li + half]), is_max);
        }
        workgroupBarrier();
    }
    let r = part[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t = p.t0 + wg.y;
    let live = t < step.tokens;
    let n = step.n_past + t + 1u;  // positions this token sees: start .. n - 1
    let start = select(0u, n - p.window, p.window > 0u && n > p.window);
    let kvh = h / (p.heads / p.kv_heads);
    let qo = (t * p.heads + h) * p.hd;
    let so = (wg.y * p.heads + h) * p.ctx;

    var m = -3.4e38;
    for (var j = start + li; j < n && live; j += 64u) {
        let ko = (j * p.kv_heads + kvh) * p.hd;
        var s = 0.0;
        for (var d = 0u; d < p.hd; d++) {
            s += q[qo + d] * kc[ko + d];
        }
        s *= p.scale;
        scores[so + j] = s;
        m = max(m, s);
    }
    part[li] = m;
    m = reduce(li, true);

    var l = 0.0;
    for (var j = start + li; j < n && live; j += 64u) {
        let e = exp(scores[so + j] - m);
        scores[so + j] = e;
        l += e;
    }
    part[li] = l;
    l = reduce(li, false);
    storageBarrier();  // every lane's exp(scores) written before any lane reads them all

    for (var d = li; d < p.hd && live; d += 64u) {
        var acc = 0.0;
        for (var j = start; j < n; j++) {
            acc += scores[so + j] * vc[(j * p.kv_heads + kvh) * p.hd + d];
        }
        out[qo + d] = acc / l;
    }
}
