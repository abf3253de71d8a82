//! Dense f32 matrix product `C[M,N] = A[M,K] B[K,N]` (row-major): the adapter's
//! GEMM ceiling, against which `resnet-native bench` measures the convolutions.

use crate::kernel::{ELEMENTWISE_WORKGROUP, Kernel, grid_1d, module_source, shader_module, with_block};
use crate::tensor::with_mirror_wgsl;
use crate::{Dispatch, EngineError, Kernels, Tensor, Variant};

pub struct GemmKernels {
    variant: Variant,
    pack: Kernel,
    matmul: Kernel,
}

/// The register tile's loads of A where the device has subgroups, in place of
/// gemm.wgsl's plain loads: a workgroup computes one block of 16 rows, so
/// lanes 0 to 3 of a subgroup load A's 16 values at each k and broadcast them,
/// as the convolutions' register tile does with its weights (the ceiling
/// should have every trick the convolutions have).
const SUBGROUP_LOADS: &str = "struct GemmIds {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

fn gemm_lane(ids: GemmIds) -> u32 {
    return ids.lane;
}

fn register_rows(a: u32, lane: u32) -> RowsA {
    let v = register_a(a + lane % 4u);
    return RowsA(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
}
";

/// The register-tile variant's operands, in place of gemm.wgsl's storage
/// operands: at and bp through their texture mirrors (see
/// [`crate::tensor::MIRROR_WGSL`]), as that variant's convolutions read their
/// sources (on llvmpipe the 1024^3 GEMM then ran 2.2-2.7x as fast).
const MIRRORED_OPERANDS: &str = "@group(0) @binding(11) var register_at: texture_2d<f32>;
@group(0) @binding(12) var register_bp: texture_2d<f32>;

fn register_a(i: u32) -> vec4<f32> {
    return mirrored_vec4(register_at, i);
}

fn register_b(i: u32) -> vec4<f32> {
    return mirrored_vec4(register_bp, i);
}
";

/// gemm.wgsl, with subgroup loads in the register tile when `subgroups`
/// (see [`module_source`]) and, when `mirrored`, its operands read through
/// texture mirrors.
pub fn gemm_source(subgroups: bool, mirrored: bool) -> String {
    let source = module_source(include_str!("../../../shaders/gemm.wgsl"), SUBGROUP_LOADS, subgroups);
    if mirrored {
        with_mirror_wgsl(with_block(&source, "storage operands", MIRRORED_OPERANDS))
    } else {
        source
    }
}

impl GemmKernels {
    /// The kernels of `variant` only; `subgroups` (the device has
    /// the feature) gives the register tile subgroup loads.
    pub fn new(device: &wgpu::Device, variant: Variant, subgroups: bool) -> Self {
        let source = gemm_source(
            subgroups && variant != Variant::WorkgroupTile,
            variant == Variant::RegisterTile,
        );
        let module = shader_module("gemm", source);
        // The compact tile has no GEMM of its own (the network needs none):
        // it measures the register tile's, with storage operands.
        let matmul = match variant {
            Variant::RegisterTile => {
                Kernel::new(device, &module, "matmul_register", 10).with_mirrored_bindings(&[11, 12])
            }
            Variant::CompactTile => Kernel::new(device, &module, "matmul_register", 10),
            Variant::WorkgroupTile => Kernel::new(device, &module, "matmul_tiled", 20),
        };
        Self {
            variant,
            pack: Kernel::new(device, &module, "gemm_pack", 0),
            matmul,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    padded_rows: u32,
    padded_cols: u32,
    row_stride: u32,
    col_stride: u32,
    _pad: [u32; 2],
}

/// Register tile: outputs per invocation in each dimension, invocations per
/// workgroup (along N), and the K unrolling the packed operands are padded to.
const REGISTER_TILE: usize = 16;
const REGISTER_WORKGROUP: usize = 64;
const REGISTER_UNROLL: usize = 4;
/// Workgroup tile: outputs per workgroup in each dimension.
const WORKGROUP_TILE: usize = 64;

/// A dispatch that copies the `rows` x `cols` matrix at `src[r * row_stride +
/// c * col_stride]` into a new zero-padded `[padded_rows, padded_cols]` tensor.
fn pack(
    device: &wgpu::Device,
    kernels: &GemmKernels,
    src: &Tensor,
    [rows, cols]: [usize; 2],
    [row_stride, col_stride]: [usize; 2],
) -> Result<(Tensor, Dispatch), EngineError> {
    let padded_rows = rows.next_multiple_of(REGISTER_UNROLL);
    let padded_cols = cols.next_multiple_of(REGISTER_TILE);
    let dst = Tensor::zeros(device, &[padded_rows, padded_cols])?;
    let params = PackParams {
        rows: rows as u32,
        cols: cols as u32,
        padded_rows: padded_rows as u32,
        padded_cols: padded_cols as u32,
        row_stride: row_stride as u32,
        col_stride: col_stride as u32,
        _pad: [0; 2],
    };
    let dispatch = kernels
        .pack
        .bind(device, &params, &[src, &dst], grid_1d(dst.len(), ELEMENTWISE_WORKGROUP));
    Ok((dst, dispatch))
}

/// `c = a b` for `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]` (overwritten). The
/// register-tile variant first packs `a` (transposed) and `b` into padded
/// scratch tensors, allocated here.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    device: &wgpu::Device,
    kernels: &Kernels,
    m: usize,
    n: usize,
    k: usize,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> Result<Vec<Dispatch>, EngineError> {
    assert!(m > 0 && n > 0 && k > 0, "matmul: empty product {m}x{n}x{k}");
    assert_eq!(a.len(), m * k, "matmul: a has shape {:?}, expected [{m}, {k}]", a.shape);
    assert_eq!(b.len(), k * n, "matmul: b has shape {:?}, expected [{k}, {n}]", b.shape);
    assert_eq!(c.len(), m * n, "matmul: c has shape {:?}, expected [{m}, {n}]", c.shape);
    let g = &kernels.gemm;
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        _pad: 0,
    };
    let limit = crate::kernel::MAX_WORKGROUPS_PER_DIMENSION as usize;
    let (columns, rows) = match g.variant {
        Variant::RegisterTile | Variant::CompactTile => (REGISTER_TILE * REGISTER_WORKGROUP, REGISTER_TILE),
        Variant::WorkgroupTile => (WORKGROUP_TILE, WORKGROUP_TILE),
    };
    let grid = [n.div_ceil(columns), m.div_ceil(rows)];
    assert!(
        grid.iter().all(|&count| count <= limit),
        "matmul: {m}x{n} needs more than {limit} workgroups in a dimension"
    );
    let grid = [grid[0] as u32, grid[1] as u32, 1];
    let flops = 2.0 * (m * n * k) as f64;
    Ok(match g.variant {
        Variant::RegisterTile | Variant::CompactTile => {
            let (at, pack_a) = pack(device, g, a, [k, m], [1, k])?;
            let (bp, pack_b) = pack(device, g, b, [k, n], [n, 1])?;
            let product = g.matmul.bind(device, &params, &[&at, &bp, c], grid).with_flops(flops);
            vec![pack_a, pack_b, product]
        }
        Variant::WorkgroupTile => vec![g.matmul.bind(device, &params, &[a, b, c], grid).with_flops(flops)],
    })
}

/// Plain-Rust reference.
pub mod cpu {
    /// `c[i][j] = sum_l a[i][l] b[l][j]`.
    pub fn matmul(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        assert_eq!(a.len(), m * k, "matmul a");
        assert_eq!(b.len(), k * n, "matmul b");
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, context};

    #[test]
    fn matmul_matches_reference_in_both_variants_with_and_without_subgroups_on_awkward_sizes() {
        let Some(ctx) = context() else { return };
        let (device, queue) = (ctx.device(), ctx.queue());
        let mut rng = Rng::new(11);
        let has_subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        if !has_subgroups {
            eprintln!("this adapter has no subgroups: the register tile is tested without them only");
        }
        let cases = [
            (Variant::RegisterTile, false),
            (Variant::RegisterTile, true),
            (Variant::WorkgroupTile, false),
        ];
        for (variant, subgroups) in cases.into_iter().filter(|&(_, s)| !s || has_subgroups) {
            let kernels = Kernels::with_subgroups(device, variant, subgroups);
            for (m, n, k) in [
                (1, 1, 1),
                (17, 33, 5),
                (5, 3, 17),
                (128, 128, 128),
                (130, 129, 20),
                (8, 200, 3),
            ] {
                let a = rng.vec(m * k, -1.0, 1.0);
                let b = rng.vec(k * n, -1.0, 1.0);
                let at = Tensor::from_f64(device, &[m, k], &a).unwrap();
                let bt = Tensor::from_f64(device, &[k, n], &b).unwrap();
                // NaN start: every element must be written.
                let ct = Tensor::from_slice(device, &[m, n], &vec![f32::NAN; m * n]).unwrap();
                let dispatches = matmul(device, &kernels, m, n, k, &at, &bt, &ct).unwrap();
                crate::kernel::submit(device, queue, &dispatches.iter().collect::<Vec<_>>());
                // Sums of up to 128 products of magnitude < 1 in f32: rounding
                // error ~1e-6, far below a misplaced term (~0.1).
                assert_close(
                    &format!("matmul {variant:?} (subgroups {subgroups}) {m}x{n}x{k}"),
                    &ct.read_blocking(device, queue).unwrap(),
                    &cpu::matmul(m, n, k, &a, &b),
                    1e-4,
                    1e-4,
                );
            }
        }
    }
}
