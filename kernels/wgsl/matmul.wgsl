// out[t, row] = sum_k w[row, k] * x[t, k] for a range of weight rows and tokens: decode (one
// token) and prefill (many) alike. The weight format comes from the stub prepended to this
// file (matmul_<type>.wgsl): `scale(row, b, nb)` gives block b's (d, m) and `quants(row, b,
// nb, i)` its values 4i .. 4i + 3 before scaling, so a value is d * q + m, read from `w` in
// the layout the CPU uses. A block's dot with x is then d * sum(q x) + m * sum(x).
//
// A workgroup takes 16 rows and TOKENS tokens; 4 lanes share a row, each summing every 4th
// block, so each weight word is decoded once for all the tile's tokens. No subgroup
// operations: the lanes meet in workgroup memory, whatever the device's subgroup size.

struct Params {
    k: u32,          // row length (a multiple of 32)
    rows: u32,       // rows in this binding of w
    row0: u32,       // the binding's first row in the whole matrix (where its outputs go)
    out_rows: u32,   // the whole matrix's rows: out's row stride
    from_first: u32, // 1: x holds only the tokens from step.first on (the output head)
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;   // [tokens, k / 4]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [tokens, out_rows]

const LANES: u32 = 4u;
const TOKENS: u32 = 8u;
var<workgroup> partial: array<f32, 64 * TOKENS>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.x * 16u + li / LANES;
    let lane = li % LANES;
    let t0 = wg.y * TOKENS;
    let tokens = min(TOKENS, step.tokens - p.from_first * step.first - t0);
    let nb = p.k / 32u;
    let live = row < p.rows;  // the last group of a rows-layout matrix may be partial
    var acc: array<f32, TOKENS>;
    for (var b = lane; b < nb && live; b += LANES) {
        // explicit zeros: wgpu zeroes a declaration without them once per invocation, not per
        // iteration (seen on lavapipe: the sums ran on into the next block)
        var qx = array<f32, TOKENS>();  // sum(q x) over the block, per token
        var sx = array<f32, TOKENS>();  // sum(x)
        for (var i = 0u; i < 8u; i++) {
            let q = quants(row, b, nb, i);
            for (var t = 0u; t < tokens; t++) {
                let xv = x[((t0 + t) * p.k + b * 32u) / 4u + i];
                qx[t] += dot(q, xv);
                sx[t] += xv.x + xv.y + xv.z + xv.w;
            }
        }
        let dm = scale(row, b, nb);
        for (var t = 0u; t < tokens; t++) {
            acc[t] += dm.x * qx[t] + dm.y * sx[t];
        }
    }
    for (var t = 0u; t < TOKENS; t++) {
        partial[li * TOKENS + t] = acc[t];
    }
    workgroupBarrier();
    if (lane == 0u && live) {
        for (var t = 0u; t < tokens; t++) {
            var s = 0.0;
            for (var l = 0u; l < LANES; l++) {
                s += partial[(li + l) * TOKENS + t];
            }
            out[(t0 + t) * p.out_rows + p.row0 + row] = s;
        }
    }
}
