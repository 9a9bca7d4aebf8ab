// out[t, row] = sum_k w[row, k] * x[t, k] for a range of weight rows and tokens: any number of
// tokens, but webgpu.py runs it up to 16 (decode, a batch of contexts' decode steps) and
// gemm.wgsl beyond (parameters and bindings of both: products.wgsl). The weight format comes
// from the stub prepended to this file (matmul_<type>.wgsl): `scale(row, b, nb)` gives block
// b's (d, m) and `quants(row, b, nb, i)` its values 4i .. 4i + 3 before scaling, so a value is
// d * q + m, read from `w` in the layout the CPU uses. A piece (4 values) of a block dots with x
// as d * sum(q x) + m * sum(x).
//
// Decode is a stream of weights, so the GPU must keep many bytes in flight (as the CUDA
// matvec does, kernels/cuda/matmul.cuh). A workgroup of 256 takes ROWS (8) rows, half an x16
// group, and TOKENS tokens; invocation li takes row li % 8 and every 32nd block of it from
// block li / 8 on. The 8 invocations of a block read 8 neighbouring words of the x16 layout
// (word c of row r at c * 16 + r: one 32-byte sector), and each loads its block's 8 pieces
// before it multiplies them. Half a group a workgroup makes twice the workgroups of one
// group, for the 512- to 2048-row matrices of a small model's decode. The LANES (32) partial
// sums of a row meet in workgroup memory, whatever the device's subgroup size. A block's
// weights are decoded once for all the tile's tokens.

const ROWS: u32 = 8u;     // a workgroup's rows: half an x16 group
const LANES: u32 = 32u;   // invocations sharing a row
const TOKENS: u32 = 8u;   // a workgroup's tokens (workgroup_id.y: the next TOKENS)
var<workgroup> partial: array<f32, 256 * TOKENS>;  // [lane, row, token]

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let r = li % ROWS;
    let lane = li / ROWS;
    let row = wg.x * ROWS + r;
    let t0 = wg.y * TOKENS;
    let tokens = min(TOKENS, step.tokens - p.from_first * step.first - t0);
    let nb = p.k / 32u;
    let live = row < p.rows;  // the last group of a rows-layout matrix may be partial
    // explicit zeros: wgpu zeroes a declaration without them once per invocation, not per
    // iteration (seen on lavapipe: sums ran on into the next block)
    var acc = array<f32, TOKENS>();
    for (var b = lane; b < nb && live; b += LANES) {
        var q = array<vec4<f32>, 8>();
        for (var i = 0u; i < 8u; i++) {
            q[i] = quants(row, b, nb, i);
        }
        let dm = scale(row, b, nb);
        for (var t = 0u; t < tokens; t++) {
            var qx = 0.0;  // sum(q x) over the block
            var sx = 0.0;  // sum(x)
            for (var i = 0u; i < 8u; i++) {
                let xv = x[((t0 + t) * p.k + b * 32u) / 4u + i];
                qx += dot(q[i], xv);
                sx += (xv.x + xv.y) + (xv.z + xv.w);
            }
            acc[t] += dm.x * qx + dm.y * sx;
        }
    }
    for (var t = 0u; t < TOKENS; t++) {
        partial[li * TOKENS + t] = acc[t];
    }
    workgroupBarrier();
    // invocation li < ROWS * tokens sums row li % ROWS's lanes for token li / ROWS
    let t = li / ROWS;
    if (t < tokens && live) {
        var s = 0.0;
        for (var l = 0u; l < LANES; l++) {
            s += partial[(l * ROWS + r) * TOKENS + t];
        }
        let o = (t0 + t) * p.out_rows + p.row0 + row;
        out[o] = select(s, out[o] + s, p.accumulate == 1u);  // x + W a: model.py's f32 order
    }
}
