// RoPE on q (in place) and k (into the key cache), and v into the value cache, at the step's
// position, in one dispatch (the CUDA backend's rope_store, kernels/cuda/ops.cuh): an
// invocation per rotated pair of q, then per two neighbouring elements of k, then of v (the
// cache's element type, kv_<type>.wgsl, may hold two in a word). Rotate-half over the
// first rd elements of each head (element i pairs with i + rd/2; the rest pass, as Phi-3's
// partial rotary has it; rd 0: no RoPE), cos and sin from the table of every position
// [ctx, rd/2, 2]. The new rows go to cache rows n_past .. n_past + tokens - 1, n_past read
// from the step state (a context's own in a batch), so nothing of it is recorded on the host.
struct Params {
    heads: u32,
    kv_heads: u32,
    hd: u32,
    rd: u32,  // the rotated elements of each head (hd, or fewer; 0: none)
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;   // [tokens, heads, hd]
@group(0) @binding(3) var<storage, read> k: array<f32>;         // [tokens, kv_heads, hd]
@group(0) @binding(4) var<storage, read> v: array<f32>;         // [tokens, kv_heads, hd]
@group(0) @binding(5) var<storage, read> table: array<vec2<f32>>;  // [ctx, rd / 2] (cos, sin)
@group(0) @binding(6) var<storage, read_write> kc: array<KvPair>;  // [ctx, kv_heads, hd / 2]
@group(0) @binding(7) var<storage, read_write> vc: array<KvPair>;  // [ctx, kv_heads, hd / 2]

// Element i of the step's k [tokens, kv_heads, hd], turned.
fn turned_k(i: u32) -> f32 {
    let half = p.rd / 2u;
    let j = i % p.hd;
    if (j >= p.rd) {
        return k[i];
    }
    let head = i - j;  // the element's head: its first element
    let pj = select(j - half, j, j < half);
    let cs = table[(step.n_past + i / (p.kv_heads * p.hd)) * half + pj];
    let a = k[head + pj];
    let b = k[head + pj + half];
    return select(b * cs.x + a * cs.y, a * cs.x - b * cs.y, j < half);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.rd / 2u;
    let kv = p.kv_heads * p.hd;
    var i = gid.x + gid.y * 65535u * 64u;
    if (i < step.tokens * p.heads * half) {
        let j = i % half;
        let row = i / half;  // token * heads + head
        let cs = table[(step.n_past + row / p.heads) * half + j];
        let a = q[row * p.hd + j];
        let b = q[row * p.hd + j + half];
        q[row * p.hd + j] = a * cs.x - b * cs.y;
        q[row * p.hd + j + half] = b * cs.x + a * cs.y;
        return;
    }
    i -= step.tokens * p.heads * half;
    let pairs = step.tokens * kv / 2u;  // of k, then of v; hd is even
    if (i < pairs) {
        kc[step.n_past * kv / 2u + i] = kv_pair(vec2<f32>(turned_k(2u * i), turned_k(2u * i + 1u)));
        return;
    }
    i -= pairs;
    if (i < pairs) {
        vc[step.n_past * kv / 2u + i] = kv_pair(vec2<f32>(v[2u * i], v[2u * i + 1u]));
    }
}
