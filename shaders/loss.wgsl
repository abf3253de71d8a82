// Softmax cross-entropy (mean over the batch) and top-k accuracy counting.
// logits [N, classes] f32, labels [N] u32 (each < classes).
//
// The batch reductions run in a single workgroup: invocation t handles rows t,
// t + 256, ... serially, leaves its partial in workgroup memory, and after one
// barrier invocation 0 adds the 256 partials in a fixed order. One barrier keeps
// CPU adapters fast, a fixed order keeps the result deterministic, and the work
// (batch x classes, a few hundred thousand elements at most) is small.

const ROWS_IN_PARALLEL: u32 = 256u;

struct LossParams {
    batch: u32,
    classes: u32,
}

var<workgroup> partial_loss: array<f32, ROWS_IN_PARALLEL>;

// softmax_cross_entropy_forward: probs = softmax(logits) per row;
// loss[0] = mean_n (logsumexp(logits[n]) - logits[n, label[n]]).
// Subtracting the row maximum before exp keeps every exponent <= 0: no overflow,
// and log(sum) >= 0 since the maximum's own term is 1.
@group(0) @binding(0) var<uniform> forward_params: LossParams;
@group(0) @binding(1) var<storage, read> forward_logits: array<f32>;
@group(0) @binding(2) var<storage, read> forward_labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> forward_probs: array<f32>;
@group(0) @binding(4) var<storage, read_write> forward_loss: array<f32>;

@compute @workgroup_size(ROWS_IN_PARALLEL)
fn softmax_cross_entropy_forward(@builtin(local_invocation_index) t: u32) {
    let p = forward_params;
    var loss_sum = 0.0;
    for (var n = t; n < p.batch; n += ROWS_IN_PARALLEL) {
        let row = n * p.classes;
        var row_max = forward_logits[row];
        for (var c = 1u; c < p.classes; c++) {
            row_max = max(row_max, forward_logits[row + c]);
        }
        var exp_sum = 0.0;
        for (var c = 0u; c < p.classes; c++) {
            let e = exp(forward_logits[row + c] - row_max);
            forward_probs[row + c] = e;
            exp_sum += e;
        }
        for (var c = 0u; c < p.classes; c++) {
            forward_probs[row + c] /= exp_sum;
        }
        loss_sum += log(exp_sum) + row_max - forward_logits[row + forward_labels[n]];
    }
    partial_loss[t] = loss_sum;
    workgroupBarrier();
    if t == 0u {
        var total = 0.0;
        for (var i = 0u; i < ROWS_IN_PARALLEL; i++) {
            total += partial_loss[i];
        }
        forward_loss[0] = total / f32(p.batch);
    }
}

// softmax_cross_entropy_backward: dlogits = (probs - onehot(label)) / N,
// one invocation per element. Linear index from a 2-D grid.
@group(0) @binding(10) var<uniform> backward_params: LossParams;
@group(0) @binding(11) var<storage, read> backward_probs: array<f32>;
@group(0) @binding(12) var<storage, read> backward_labels: array<u32>;
@group(0) @binding(13) var<storage, read_write> backward_dlogits: array<f32>;

@compute @workgroup_size(256)
fn softmax_cross_entropy_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = backward_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.batch * p.classes {
        return;
    }
    let is_label = backward_labels[i / p.classes] == i % p.classes;
    backward_dlogits[i] = (backward_probs[i] - select(0.0, 1.0, is_label)) / f32(p.batch);
}

struct TopKParams {
    batch: u32,
    classes: u32,
    k: u32,
}

var<workgroup> partial_hits: array<u32, ROWS_IN_PARALLEL>;

// top_k_correct: correct[0] = number of rows where fewer than k logits are
// strictly greater than the label's (ties count in the label's favour).
@group(0) @binding(20) var<uniform> top_k_params: TopKParams;
@group(0) @binding(21) var<storage, read> top_k_logits: array<f32>;
@group(0) @binding(22) var<storage, read> top_k_labels: array<u32>;
@group(0) @binding(23) var<storage, read_write> top_k_correct_count: array<u32>;

@compute @workgroup_size(ROWS_IN_PARALLEL)
fn top_k_correct(@builtin(local_invocation_index) t: u32) {
    let p = top_k_params;
    var hits = 0u;
    for (var n = t; n < p.batch; n += ROWS_IN_PARALLEL) {
        let row = n * p.classes;
        let label_logit = top_k_logits[row + top_k_labels[n]];
        var greater = 0u;
        for (var c = 0u; c < p.classes; c++) {
            greater += select(0u, 1u, top_k_logits[row + c] > label_logit);
        }
        hits += select(0u, 1u, greater < p.k);
    }
    partial_hits[t] = hits;
    workgroupBarrier();
    if t == 0u {
        var total = 0u;
        for (var i = 0u; i < ROWS_IN_PARALLEL; i++) {
            total += partial_hits[i];
        }
        top_k_correct_count[0] = total;
    }
}
