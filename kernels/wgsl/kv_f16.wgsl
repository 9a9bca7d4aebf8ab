// The KV cache's element type, f16 (`--kv-type f16`: half the memory of f32), two to a word
// (core WGSL's pack2x16float / unpack2x16float: no shader-f16 needed): prepended to
// rope_store.wgsl and attention.wgsl, which hold the cache as arrays of KvPair (two elements)
// and Kv4 (four). An element is rounded once as it is stored and widened exactly as it is read.
alias KvPair = u32;
alias Kv4 = vec2<u32>;

fn kv_pair(v: vec2<f32>) -> KvPair {
    return pack2x16float(v);
}

fn kv4(v: Kv4) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
}
