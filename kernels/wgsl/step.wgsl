// What changes from one forward step to the next, written once per step (12 bytes): every
// other parameter of a dispatch is fixed when the graph is built. Prepended to each kernel.
struct Step {
    n_past: u32,  // positions already in the KV cache
    tokens: u32,  // tokens in this step
    first: u32,   // the first token whose logits are wanted
}
@group(0) @binding(0) var<uniform> step: Step;
