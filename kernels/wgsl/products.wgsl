// The parameters and bindings of the two products, out[t, row] = sum_k w[row, k] * x[t, k]
// (matmul.wgsl: the matvec of a step of up to 16 tokens; gemm.wgsl: the tiled GEMM beyond),
// which webgpu.py plans with the same arguments. Prepended to both, after the weight type's stub.
struct Params {
    k: u32,          // row length (a multiple of 32)
    rows: u32,       // rows in this binding of w
    row0: u32,       // the binding's first row in the whole matrix (where its outputs go)
    out_rows: u32,   // the whole matrix's rows: out's row stride
    from_first: u32, // 1: x holds only the tokens from step.first on (the output head)
    accumulate: u32, // 1: out += the product (the residual add of the o and down products)
}

@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;   // [tokens, k / 4]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // [tokens, out_rows]
