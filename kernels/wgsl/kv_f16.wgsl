// The KV cache's element type, f16 (`--kv-type f16`: half the memory of f32), two to a word
// (core WGSL's pack2x16float / unpack2x16float: no shader-f16 needed): prepended to
// rope_store.wgsl and attention.wgsl, which hold the cache as arrays of KvPair (two elements)
// and Kv4 (four). An element is rounded once as it is stored and widened exactly as it is read.
alias KvPair = u32;
alias Kv4 = vec2<u32>;

// v rounded to f16, as its 16 bits. pack2x16float leaves a value past f16's range undefined:
// such a value (one that rounds past 65504) is stored as f16's infinity of its sign, as the
// CPU's f16 cache (numpy's astype) stores it.
fn f16_bits(v: f32) -> u32 {
    let bits = pack2x16float(vec2<f32>(clamp(v, -65504.0, 65504.0), 0.0)) & 0xffffu;
    return select(bits, (bits & 0x8000u) | 0x7c00u, abs(v) >= 65520.0);
}

fn kv_pair(v: vec2<f32>) -> KvPair {
    return f16_bits(v.x) | (f16_bits(v.y) << 16u);
}

fn kv4(v: Kv4) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
}
