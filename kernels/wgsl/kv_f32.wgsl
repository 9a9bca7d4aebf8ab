// The KV cache's element type, f32: prepended to rope_store.wgsl and attention.wgsl, which hold
// the cache as arrays of KvPair (two elements) and Kv4 (four).
alias KvPair = vec2<f32>;
alias Kv4 = vec4<f32>;

fn kv_pair(v: vec2<f32>) -> KvPair {
    return v;
}

fn kv4(v: Kv4) -> vec4<f32> {
    return v;
}
