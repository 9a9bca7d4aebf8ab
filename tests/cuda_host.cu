// The CUDA weight types' decoding compiled for the host (tests/test_cuda.py runs it): what the
// numpy twins of tests/cuda_emulator.py cannot check, the kernels' own reading of the x16
// bytes. For a type that builds its quants as bytes (X16Bytes: from bit fields, q5_0, q5_1, q2_k,
// q3_k, q4_k, q5_k, q6_k; from a table of levels, iq4_nl) it runs, on the CPU, the code the
// kernels run:
//   - embed's dequantisation (scale_of, quants: d q + m per value) of every row;
//   - the decode matvec's lane loads and dots (mv_load, mv_dot) over every step and lane of a
//     warp, the lanes of each quad of rows summed, for each token;
//   - the GEMM's condition that quants are whole numbers f16 holds exactly.
// Usage: cuda_host TYPE IN OUT. IN: u32 rows, k, tokens; the matrix's x16 bytes; x f32
// [tokens, k]. OUT: embed f32 [rows, k]; matvec f32 [tokens, rows]; u32 1 if every quant is
// exact in f16.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "iq4_nl.cuh"
#include "q2_k.cuh"
#include "q3_k.cuh"
#include "q4_k.cuh"
#include "q5_0.cuh"
#include "q5_1.cuh"
#include "q5_k.cuh"
#include "q6_k.cuh"

template <class W>
static void run(const uint32_t *w, uint32_t rows, uint32_t k, uint32_t tokens, const float *x, FILE *out) {
    const uint32_t nb = k / 32;
    std::vector<float> table((size_t)rows * k);
    uint32_t exact = 1;
    for (uint32_t row = 0; row < rows; row++)
        for (uint32_t b = 0; b < nb; b++)
            for (uint32_t i = 0; i < 8; i++) {  // as embed() in ops.cuh
                const float2 dm = scale_of<W>(w, row, b, nb, i);
                const float4 q = W::quants(w, row, b, nb, i);
                const float v[4] = {q.x, q.y, q.z, q.w};
                for (uint32_t e = 0; e < 4; e++) {
                    table[(size_t)row * k + b * 32 + 4 * i + e] = dm.x * v[e] + dm.y;
                    exact &= __half2float(__float2half_rn(v[e])) == v[e] && v[e] > -2048.0f && v[e] < 2048.0f;
                }
            }
    fwrite(table.data(), 4, table.size(), out);
    std::vector<float> product((size_t)tokens * rows);
    const uint32_t steps = (k + W::MV_STEP - 1) / W::MV_STEP;
    for (uint32_t t = 0; t < tokens; t++)
        for (uint32_t group = 0; group < rows / 16; group++) {
            float sums[16] = {};
            for (uint32_t lane = 0; lane < 32; lane++) {  // as matvec_warp (matmul.cuh), one warp taking every step
                float acc[4] = {};
                for (uint32_t s = 0; s < steps; s++) {
                    const typename W::Frag f = W::mv_load(w, group, k, rows, s, steps, lane, x + (size_t)t * k);
                    if (f.live)
                        W::mv_dot(f, f.x[0], f.x[1], acc);
                }
                for (uint32_t j = 0; j < 4; j++)
                    sums[4 * (lane % 4) + j] += acc[j];
            }
            for (uint32_t r = 0; r < 16; r++)
                product[(size_t)t * rows + group * 16 + r] = sums[r];
        }
    fwrite(product.data(), 4, product.size(), out);
    fwrite(&exact, 4, 1, out);
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    FILE *in = fopen(argv[2], "rb");
    uint32_t head[3];
    if (!in || fread(head, 4, 3, in) != 3)
        return 3;
    const uint32_t rows = head[0], k = head[1], tokens = head[2];
    std::vector<uint8_t> rest;
    for (int c; (c = fgetc(in)) != EOF;)
        rest.push_back(uint8_t(c));
    fclose(in);
    const size_t x_bytes = (size_t)tokens * k * 4;
    std::vector<uint32_t> w((rest.size() - x_bytes) / 4);
    std::vector<float> x((size_t)tokens * k);
    memcpy(w.data(), rest.data(), w.size() * 4);
    memcpy(x.data(), rest.data() + w.size() * 4, x_bytes);
    FILE *out = fopen(argv[3], "wb");
    const std::string type = argv[1];
    if (type == "q5_0")
        run<Q5_0>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "q5_1")
        run<Q5_1>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "iq4_nl")
        run<IQ4_NL>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "q2_k")
        run<Q2_K>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "q3_k")
        run<Q3_K>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "q4_k")
        run<Q4_K>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "q5_k")
        run<Q5_K>(w.data(), rows, k, tokens, x.data(), out);
    else if (type == "q6_k")
        run<Q6_K>(w.data(), rows, k, tokens, x.data(), out);
    else
        return 4;
    return fclose(out) ? 5 : 0;
}
