//! One decoder layer of the fused step: a forward pass that keeps what its
//! backward pass needs ([`LayerActivations`]), and the backward pass derived
//! by hand.
//!
//! Base weights are frozen, so the backward pass of a projection computes
//! only its input gradient (`dy · Wᵀ`), never a weight gradient; adapters
//! add their `A` and `B` gradients into the step's flat vector. Parts of
//! the backward pass nothing below needs are skipped: the lowest adapted
//! layer computes no input gradient, and a layer with adapters only in
//! its MLP stops there. Not here: the head, the loss, the embedding
//! (`super`).

use super::attention::{self, Heads};
use super::kernels::{
    MatMut, MatRef, Values, WeightRef, add_assign, matmul, matmul_weight, mul_assign, rms_norm,
    rms_norm_backward, rope, swiglu, swiglu_backward,
};
use super::spare;
use crate::model::llama::{DropoutSeeds, dropout_keep_mask};

/// Index of each projection in [`LayerWeights::proj`] (`TargetModule::ALL` order).
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

/// An adapter's matrices in PEFT layout and where its gradients go.
#[derive(Debug, Clone, Copy)]
pub struct Adapter<'w> {
    /// `[r, in]`.
    pub a: &'w [f32],
    /// `[out, r]`.
    pub b: &'w [f32],
    pub r: usize,
    pub scale: f32,
    /// Where `∂A` starts in the flat gradient; `∂B` follows it.
    pub grad_at: usize,
}

/// A frozen projection `[in, out]` (f32, bf16 or f16) and its adapter,
/// if it has one.
#[derive(Debug, Clone, Copy)]
pub struct Linear<'w> {
    pub weight: Values<'w>,
    pub inp: usize,
    pub out: usize,
    pub lora: Option<Adapter<'w>>,
}

/// What a projection's backward pass needs of its forward pass.
#[derive(Debug, Default)]
struct LinearActivations {
    /// `x̃ · Aᵀ`, `[tokens, r]`.
    xa: Vec<f32>,
    /// With dropout: the mask and the masked input `x̃`.
    dropout: Option<(Vec<f32>, Vec<f32>)>,
}

impl Linear<'_> {
    fn weight(&self) -> WeightRef<'_> {
        WeightRef::new(self.weight, self.inp, self.out)
    }

    /// `out = x · W + scale · (x̃ · Aᵀ) · Bᵀ` for `tokens` rows.
    fn forward(
        &self,
        x: &[f32],
        tokens: usize,
        mask: Option<Vec<f32>>,
    ) -> (Vec<f32>, LinearActivations) {
        let mut out = spare::for_output(tokens * self.out);
        let xm = MatRef::new(x, tokens, self.inp);
        matmul_weight(
            MatMut::new(&mut out, tokens, self.out),
            xm,
            self.weight(),
            1.0,
            false,
        );
        let saved = self.saved(x, tokens, mask);
        if let Some(ad) = self.lora {
            matmul(
                MatMut::new(&mut out, tokens, self.out),
                MatRef::new(&saved.xa, tokens, ad.r),
                MatRef::new(ad.b, self.out, ad.r).t(),
                ad.scale,
                true,
            );
        }
        (out, saved)
    }

    /// Only what [`Self::backward`] needs of [`Self::forward`] (the masked
    /// input and `x̃ · Aᵀ`), without the output.
    fn saved(&self, x: &[f32], tokens: usize, mask: Option<Vec<f32>>) -> LinearActivations {
        let Some(ad) = self.lora else {
            return LinearActivations::default();
        };
        let dropout = mask.map(|mask| {
            let mut masked = mask.clone();
            mul_assign(&mut masked, x);
            (mask, masked)
        });
        let input = dropout.as_ref().map_or(x, |(_, masked)| masked);
        let mut xa = spare::for_output(tokens * ad.r);
        matmul(
            MatMut::new(&mut xa, tokens, ad.r),
            MatRef::new(input, tokens, self.inp),
            MatRef::new(ad.a, ad.r, self.inp).t(),
            1.0,
            false,
        );
        LinearActivations { xa, dropout }
    }

    /// Adds the adapter's gradients into `grads` and, with `dx`, writes (or
    /// with `accumulate` adds) the input gradient.
    fn backward(
        &self,
        x: &[f32],
        saved: &LinearActivations,
        dy: &[f32],
        tokens: usize,
        dx: Option<(&mut [f32], bool)>,
        grads: &mut [f32],
    ) {
        let dym = MatRef::new(dy, tokens, self.out);
        let mut dyb = Vec::new();
        if let Some(ad) = self.lora {
            let input = saved.dropout.as_ref().map_or(x, |(_, masked)| masked);
            dyb = spare::for_output(tokens * ad.r);
            matmul(
                MatMut::new(&mut dyb, tokens, ad.r),
                dym,
                MatRef::new(ad.b, self.out, ad.r),
                1.0,
                false,
            );
            let (ga, gb) = grads[ad.grad_at..].split_at_mut(ad.r * self.inp);
            matmul(
                MatMut::new(ga, ad.r, self.inp),
                MatRef::new(&dyb, tokens, ad.r).t(),
                MatRef::new(input, tokens, self.inp),
                ad.scale,
                true,
            );
            matmul(
                MatMut::new(&mut gb[..self.out * ad.r], self.out, ad.r),
                dym.t(),
                MatRef::new(&saved.xa, tokens, ad.r),
                ad.scale,
                true,
            );
        }
        let Some((dx, accumulate)) = dx else {
            spare::give_back(dyb);
            return;
        };
        matmul_weight(
            MatMut::new(dx, tokens, self.inp),
            dym,
            self.weight().t(),
            1.0,
            accumulate,
        );
        if let Some(ad) = self.lora {
            let through_a = |out: &mut [f32], accumulate| {
                matmul(
                    MatMut::new(out, tokens, self.inp),
                    MatRef::new(&dyb, tokens, ad.r),
                    MatRef::new(ad.a, ad.r, self.inp),
                    ad.scale,
                    accumulate,
                )
            };
            match &saved.dropout {
                Some((mask, _)) => {
                    let mut tmp = spare::for_output(tokens * self.inp);
                    through_a(&mut tmp, false);
                    mul_assign(&mut tmp, mask);
                    add_assign(dx, &tmp);
                    spare::give_back(tmp);
                }
                None => through_a(dx, true),
            }
        }
        spare::give_back(dyb);
    }
}

/// The frozen weights of one layer, with the adapters of this step.
#[derive(Debug)]
pub struct LayerWeights<'w> {
    pub input_norm: &'w [f32],
    pub post_norm: &'w [f32],
    /// In `TargetModule::ALL` order.
    pub proj: [Linear<'w>; 7],
}

impl LayerWeights<'_> {
    pub fn has_adapter(&self) -> bool {
        self.proj.iter().any(|p| p.lora.is_some())
    }

    fn adapted(&self, i: usize) -> bool {
        self.proj[i].lora.is_some()
    }
}

/// What is the same for every layer of one pass.
#[derive(Debug)]
pub struct Pass<'p> {
    pub heads: Heads,
    pub hidden: usize,
    pub eps: f32,
    /// RoPE tables, `seq × head_dim`.
    pub cos: &'p [f32],
    pub sin: &'p [f32],
    /// LoRA dropout probability (0 = none).
    pub dropout: f64,
}

impl Pass<'_> {
    pub fn tokens(&self) -> usize {
        self.heads.rows * self.heads.seq
    }
}

/// What [`backward`] needs of [`forward`].
#[derive(Debug)]
pub struct LayerActivations {
    x: Vec<f32>,
    inv1: Vec<f32>,
    n1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    lse: Vec<f32>,
    o: Vec<f32>,
    h: Vec<f32>,
    inv2: Vec<f32>,
    n2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    linear: [LinearActivations; 7],
}

impl LayerActivations {
    /// Gives every buffer to this thread's next passes ([`spare`]).
    pub fn give_back(self) {
        let linear = self.linear.into_iter().flat_map(|l| {
            let (mask, masked) = l.dropout.unzip();
            [Some(l.xa), mask, masked].into_iter().flatten()
        });
        let own = [
            self.x, self.inv1, self.n1, self.q, self.k, self.v, self.lse, self.o, self.h,
            self.inv2, self.n2, self.gate, self.up, self.act,
        ];
        own.into_iter().chain(linear).for_each(spare::give_back);
    }
}

/// The layer's output for input `x` (`[tokens, hidden]`), and what its
/// backward pass needs. `dropout` holds this layer's per-row seeds.
pub fn forward(
    w: &LayerWeights,
    pass: &Pass,
    x: Vec<f32>,
    dropout: Option<&DropoutSeeds>,
) -> (Vec<f32>, LayerActivations) {
    let (out, saved) = run(w, pass, x, dropout, true);
    (out.expect("asked for"), saved)
}

/// What [`forward`] keeps for the backward pass, computed again from the
/// layer's input with the same dropout seeds: the same values, without
/// the output's last product (the down projection's frozen weight).
pub fn recompute(
    w: &LayerWeights,
    pass: &Pass,
    x: Vec<f32>,
    dropout: Option<&DropoutSeeds>,
) -> LayerActivations {
    run(w, pass, x, dropout, false).1
}

/// [`forward`], with the output only if `output`.
fn run(
    w: &LayerWeights,
    pass: &Pass,
    x: Vec<f32>,
    dropout: Option<&DropoutSeeds>,
    output: bool,
) -> (Option<Vec<f32>>, LayerActivations) {
    let t = pass.tokens();
    let s = pass.heads;
    let mut linear: [LinearActivations; 7] = Default::default();
    let mask = |i: usize| {
        let p = &w.proj[i];
        dropout
            .filter(|_| p.lora.is_some() && pass.dropout > 0.0)
            .map(|seeds| {
                dropout_keep_mask(
                    s.rows,
                    s.seq * p.inp,
                    pass.dropout,
                    &seeds.mixed(i as u64 + 1),
                )
            })
    };
    let mut project = |i: usize, input: &[f32]| {
        let (out, saved) = w.proj[i].forward(input, t, mask(i));
        linear[i] = saved;
        out
    };

    let mut inv1 = spare::for_output(t);
    let mut n1 = spare::for_output(t * pass.hidden);
    rms_norm(&x, w.input_norm, pass.eps, &mut n1, &mut inv1);
    let mut q = project(Q, &n1);
    let mut k = project(K, &n1);
    let v = project(V, &n1);
    rope(&mut q, s.heads, s.dim, s.seq, pass.cos, pass.sin, false);
    rope(&mut k, s.kv_heads, s.dim, s.seq, pass.cos, pass.sin, false);
    let mut lse = spare::for_output(s.rows * s.heads * s.seq);
    let mut o = spare::for_output(t * s.heads * s.dim);
    attention::forward(&s, &q, &k, &v, &mut o, &mut lse);
    let mut h = project(O, &o);
    add_assign(&mut h, &x);

    let mut inv2 = spare::for_output(t);
    let mut n2 = spare::for_output(t * pass.hidden);
    rms_norm(&h, w.post_norm, pass.eps, &mut n2, &mut inv2);
    let gate = project(GATE, &n2);
    let up = project(UP, &n2);
    let mut act = spare::for_output(gate.len());
    swiglu(&gate, &up, &mut act);
    let out = if output {
        let mut out = project(DOWN, &act);
        add_assign(&mut out, &h);
        Some(out)
    } else {
        linear[DOWN] = w.proj[DOWN].saved(&act, t, mask(DOWN));
        None
    };
    let saved = LayerActivations {
        x,
        inv1,
        n1,
        q,
        k,
        v,
        lse,
        o,
        h,
        inv2,
        n2,
        gate,
        up,
        act,
        linear,
    };
    (out, saved)
}

/// From `dy` (`∂/∂output`), adds the adapters' gradients into `grads` and,
/// with `need_dx`, returns `∂/∂input`.
pub fn backward(
    w: &LayerWeights,
    pass: &Pass,
    a: &LayerActivations,
    dy: &[f32],
    need_dx: bool,
    grads: &mut [f32],
) -> Option<Vec<f32>> {
    let t = pass.tokens();
    let s = pass.heads;
    let attention_needed = need_dx || w.adapted(Q) || w.adapted(K) || w.adapted(V);
    let dh_needed = attention_needed || w.adapted(O);
    let d_act_needed = dh_needed || w.adapted(GATE) || w.adapted(UP);
    // Each is first written by a product that does not accumulate.
    let buf = |n: usize, needed: bool| needed.then(|| spare::for_output(n));

    // MLP.
    let mut d_act = buf(a.act.len(), d_act_needed);
    w.proj[DOWN].backward(
        &a.act,
        &a.linear[DOWN],
        dy,
        t,
        d_act.as_deref_mut().map(|d| (d, false)),
        grads,
    );
    let d_act = d_act?;
    let (mut d_gate, mut d_up) = (
        spare::for_output(d_act.len()),
        spare::for_output(d_act.len()),
    );
    swiglu_backward(&a.gate, &a.up, &d_act, &mut d_gate, &mut d_up);
    spare::give_back(d_act);
    let mut dn2 = buf(t * pass.hidden, dh_needed);
    w.proj[GATE].backward(
        &a.n2,
        &a.linear[GATE],
        &d_gate,
        t,
        dn2.as_deref_mut().map(|d| (d, false)),
        grads,
    );
    w.proj[UP].backward(
        &a.n2,
        &a.linear[UP],
        &d_up,
        t,
        dn2.as_deref_mut().map(|d| (d, true)),
        grads,
    );
    spare::give_back(d_gate);
    spare::give_back(d_up);
    let dn2 = dn2?;
    let mut dh = spare::copy_of(dy);
    rms_norm_backward(&a.h, w.post_norm, &a.inv2, &dn2, &mut dh);
    spare::give_back(dn2);

    // Attention.
    let mut d_o = buf(a.o.len(), attention_needed);
    w.proj[O].backward(
        &a.o,
        &a.linear[O],
        &dh,
        t,
        d_o.as_deref_mut().map(|d| (d, false)),
        grads,
    );
    let d_o = d_o?;
    let mut dq = spare::for_output(a.q.len());
    let mut dk = spare::zeroed(a.k.len());
    let mut dv = spare::zeroed(a.v.len());
    attention::backward(
        &s, &a.q, &a.k, &a.v, &a.o, &a.lse, &d_o, &mut dq, &mut dk, &mut dv,
    );
    spare::give_back(d_o);
    rope(&mut dq, s.heads, s.dim, s.seq, pass.cos, pass.sin, true);
    rope(&mut dk, s.kv_heads, s.dim, s.seq, pass.cos, pass.sin, true);
    let mut dn1 = buf(t * pass.hidden, need_dx);
    for (i, d, accumulate) in [(Q, &dq, false), (K, &dk, true), (V, &dv, true)] {
        w.proj[i].backward(
            &a.n1,
            &a.linear[i],
            d,
            t,
            dn1.as_deref_mut().map(|d| (d, accumulate)),
            grads,
        );
    }
    for d in [dq, dk, dv] {
        spare::give_back(d);
    }
    let dn1 = dn1?;
    rms_norm_backward(&a.x, w.input_norm, &a.inv1, &dn1, &mut dh);
    spare::give_back(dn1);
    Some(dh)
}
