// Causal grouped-query attention for a chunk of a step's tokens, from t0: one workgroup of 256
// per (head, token); token t (position n_past + t) sees cache positions 0 ..= n_past + t, or
// the last `window` of them in a sliding-window layer (Mistral, Gemma 3). Scores go to a
// scratch row of the context's length, so any context fits; max and sum are reduced in
// workgroup memory, whatever the device's subgroup size.
//
// The cache is read four elements at a time (heads of up to MAX_HEAD_DIM, a multiple of 4;
// webgpu.py refuses others), in its element type (kv_<type>.wgsl: f32, or f16 widened as read). Scores: each invocation takes every 256th position, its key
// against the query held in workgroup memory. Values: the invocations are hd / 4 columns of
// four dimensions by 256 / (hd / 4) lanes of positions, so a position's value row is read by
// neighbouring invocations at once and every lane sums its own positions; the lanes meet in
// workgroup memory.
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
@group(0) @binding(3) var<storage, read> kc: array<Kv4>;             // [ctx, kv_heads, hd / 4]
@group(0) @binding(4) var<storage, read> vc: array<Kv4>;             // [ctx, kv_heads, hd / 4]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;      // [tokens, heads, hd]
@group(0) @binding(6) var<storage, read_write> scores: array<f32>;   // [chunk, heads, ctx]

const THREADS: u32 = 256u;
const MAX_HEAD_DIM: u32 = 256u;
var<workgroup> query: array<vec4<f32>, MAX_HEAD_DIM / 4>;
var<workgroup> part: array<f32, THREADS>;
var<workgroup> vpart: array<vec4<f32>, THREADS>;  // [position lane, column]

fn reduce(li: u32, is_max: bool) -> f32 {
    workgroupBarrier();
    for (var half = THREADS / 2u; half > 0u; half >>= 1u) {
        if (li < half) {
            part[li] = select(part[li] + part[li + half], max(part[li], part[li + half]), is_max);
        }
        workgroupBarrier();
    }
    let r = part[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let t = p.t0 + wg.y;
    let live = t < step.tokens;
    let n = step.n_past + t + 1u;  // positions this token sees: start .. n - 1
    let start = select(0u, n - p.window, p.window > 0u && n > p.window);
    let kvh = h / (p.heads / p.kv_heads);
    let hd4 = p.hd / 4u;
    let qo = (t * p.heads + h) * p.hd;
    let so = (wg.y * p.heads + h) * p.ctx;

    if (li < hd4 && live) {
        query[li] = vec4<f32>(q[qo + 4u * li], q[qo + 4u * li + 1u], q[qo + 4u * li + 2u], q[qo + 4u * li + 3u]);
    }
    workgroupBarrier();

    var m = -3.4e38;
    for (var j = start + li; j < n && live; j += THREADS) {
        let ko = (j * p.kv_heads + kvh) * hd4;
        var s = 0.0;
        for (var d = 0u; d < hd4; d++) {
            s += dot(query[d], kv4(kc[ko + d]));
        }
        s *= p.scale;
        scores[so + j] = s;
        m = max(m, s);
    }
    part[li] = m;
    m = reduce(li, true);

    var l = 0.0;
    for (var j = start + li; j < n && live; j += THREADS) {
        let e = exp(scores[so + j] - m);
        scores[so + j] = e;
        l += e;
    }
    part[li] = l;
    l = reduce(li, false);
    storageBarrier();  // every lane's exp(scores) written before any lane reads them all

    let lanes = THREADS / hd4;  // lanes of positions
    let c = li % hd4;
    let lane = li / hd4;
    var acc = vec4<f32>();
    for (var j = start + lane; j < n && lane < lanes && live; j += lanes) {
        acc += scores[so + j] * kv4(vc[(j * p.kv_heads + kvh) * hd4 + c]);
    }
    vpart[li] = acc;
    workgroupBarrier();
    if (li < hd4 && live) {
        var o = vec4<f32>();
        for (var k = 0u; k < lanes; k++) {
            o += vpart[k * hd4 + li];
        }
        o /= l;
        out[qo + 4u * li] = o.x;
        out[qo + 4u * li + 1u] = o.y;
        out[qo + 4u * li + 2u] = o.z;
        out[qo + 4u * li + 3u] = o.w;
    }
}
