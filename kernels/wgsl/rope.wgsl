// Rotate x [tokens, heads, hd] in place by each token's position (rotate-half over the first
// rd elements of each head: element i pairs with i + rd/2; the rest pass, as Phi-3's partial
// rotary has it), cos and sin from a table of every position [ctx, rd/2, 2], computed once on
// the host exactly as the CPU computes its own (llmr_rope_table).
struct Params {
    heads: u32,
    hd: u32,
    rd: u32,  // the rotated elements of each head (hd, or fewer)
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.rd / 2u;
    let i = gid.x + gid.y * 65535u * 64u;
    if (i >= step.tokens * p.heads * half) {
        return;
    }
    let j = i % half;
    let row = i / half;  // token * heads + head
    let t = row / p.heads;
    let at = ((step.n_past + t) * half + j) * 2u;
    let c = table[at];
    let s = table[at + 1u];
    let a = x[row * p.hd + j];
    let b = x[row * p.hd + j + half];
    x[row * p.hd + j] = a * c - b * s;
    x[row * p.hd + j + half] = b * c + a * s;
}
