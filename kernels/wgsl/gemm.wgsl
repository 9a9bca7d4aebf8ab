// out[t, row] = sum_k w[row, k] * x[t, k] for steps of more than 16 tokens (prompts; webgpu.py's
// GEMM_FROM; parameters and bindings: products.wgsl, as the matvec's): a workgroup of 256 computes a tile of 64 rows by 64 tokens, each invocation 4 rows by 4
// tokens of it. Per block of 32 values along k the workgroup dequantises the tile's weights
// (the weight type's stub, as matmul.wgsl and embed.wgsl read it: d * q + m, the reference's
// f32 values) and copies the tokens' activations into workgroup memory, once for the whole
// tile: each weight is decoded once for 64 tokens (the matvec: for 8), and an invocation's 16
// sums take two 16-byte reads of workgroup memory per 16 multiply-adds. Sums in f32: a
// block's 32 products in order, then added to the row's sum (as the matvec sums by blocks: the
// error grows with k / 32, not k).

const TILE: u32 = 64u;  // rows, and tokens, of a workgroup's tile
// one block of the tile: [k][row / 4] of 4 rows' values, [k][token / 4] of 4 tokens'
var<workgroup> wt: array<vec4<f32>, 32 * TILE / 4>;
var<workgroup> xt: array<vec4<f32>, 32 * TILE / 4>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let r0 = wg.x * TILE;
    let t0 = wg.y * TILE;
    let tokens = step.tokens - p.from_first * step.first;
    let nb = p.k / 32u;
    let rq = li % 16u;  // this invocation's rows r0 + 4 rq .. + 3
    let tq = li / 16u;  // and tokens t0 + 4 tq .. + 3
    var acc = array<vec4<f32>, 4>();  // acc[c]: its 4 rows for token 4 tq + c
    for (var b = 0u; b < nb; b++) {
        // the block's weights of the tile, dequantised, and its activations: invocation li < 128
        // takes 4 rows' piece (li / 16) % 8 (values 4i .. 4i + 3), li >= 128 4 tokens'; each
        // writes whole vectors of workgroup memory (a write to one component of a vector may
        // write the whole vector: four invocations sharing one would race)
        let quad = li % 16u;
        let i = (li / 16u) % 8u;
        var v = array<vec4<f32>, 4>();  // v[j]: row (or token) 4 quad + j's values 4i .. 4i + 3
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + 4u * quad + j;
            let t = t0 + 4u * quad + j;
            if (li < 128u && r < p.rows) {
                let dm = scale(r, b, nb);
                v[j] = dm.x * quants(r, b, nb, i) + dm.y;
            } else if (li >= 128u && t < tokens) {
                v[j] = x[t * (p.k / 4u) + 8u * b + i];
            }
        }
        for (var c = 0u; c < 4u; c++) {
            let value = vec4<f32>(v[0][c], v[1][c], v[2][c], v[3][c]);  // value 4i + c of the 4
            if (li < 128u) {
                wt[(4u * i + c) * 16u + quad] = value;
            } else {
                xt[(4u * i + c) * 16u + quad] = value;
            }
        }
        workgroupBarrier();
        var blk = array<vec4<f32>, 4>();  // the block's sums, then added to the whole's
        for (var kk = 0u; kk < 32u; kk++) {
            let a = wt[kk * 16u + rq];
            let xs = xt[kk * 16u + tq];
            blk[0] += a * xs.x;
            blk[1] += a * xs.y;
            blk[2] += a * xs.z;
            blk[3] += a * xs.w;
        }
        for (var c = 0u; c < 4u; c++) {
            acc[c] += blk[c];
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let t = t0 + 4u * tq + c;
        for (var j = 0u; j < 4u; j++) {
            let row = r0 + 4u * rq + j;
            if (t < tokens && row < p.rows) {
                let o = t * p.out_rows + p.row0 + row;
                out[o] = select(acc[c][j], out[o] + acc[c][j], p.accumulate == 1u);  // x + W a
            }
        }
    }
}
