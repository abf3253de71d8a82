// Dense f32 matrix product C[M,N] = A[M,K] B[K,N], row-major: the adapter's
// GEMM ceiling that the convolution kernels are measured against.
//
// - matmul_register (CPU adapters): gemm_pack first copies A transposed and B
//   into zero-padded scratch, then 16x16 outputs per invocation, no barriers
//   and no bounds checks in the K loop;
// - matmul_tiled (GPUs): 64x64 outputs per 16x16 workgroup, A and B staged
//   through workgroup memory 16 deep, 4x4 outputs per invocation.

struct Matmul {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

// gemm_pack: dst[r][c] = src[r * row_stride + c * col_stride] inside rows x
// cols, 0 in the padding up to padded_rows x padded_cols.
struct Pack {
    rows: u32,
    cols: u32,
    padded_rows: u32,
    padded_cols: u32,
    row_stride: u32,
    col_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> pack_params: Pack;
@group(0) @binding(1) var<storage, read> pack_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> pack_dst: array<f32>;

@compute @workgroup_size(256)
fn gemm_pack(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let p = pack_params;
    let i = gid.x + gid.y * groups.x * 256u;
    if i >= p.padded_rows * p.padded_cols {
        return;
    }
    let r = i / p.padded_cols;
    let c = i % p.padded_cols;
    var value = 0.0;
    if r < p.rows && c < p.cols {
        value = pack_src[r * p.row_stride + c * p.col_stride];
    }
    pack_dst[i] = value;
}

// matmul_register: 16x16 outputs per invocation from packed operands
// at[k][m] (A transposed) and bp[k][n], both zero-padded to multiples of 16
// columns and 4 rows, so the K loop (unrolled by 4) has no bounds checks and
// loads only whole vec4s. On llvmpipe loads dominate; of the tiles measured
// (4x8 to 32x32 outputs per invocation) 16x16, i.e. 8 vec4 loads per 256
// multiply-adds, was the fastest. 64 invocations per workgroup along N;
// workgroup_id.y is the block of 16 rows.
@group(0) @binding(10) var<uniform> register_params: Matmul;
@group(0) @binding(13) var<storage, read_write> register_c: array<f32>;

// BEGIN storage operands. For the register-tile variant the engine swaps this
// block for `MIRRORED_OPERANDS` (gemm.rs), which reads at and bp through
// texture mirrors as that variant's convolutions read theirs; the compact
// variant's convolutions read storage buffers, as here.
@group(0) @binding(11) var<storage, read> register_at: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> register_bp: array<vec4<f32>>;

// vec4 i of at and of bp.
fn register_a(i: u32) -> vec4<f32> {
    return register_at[i];
}

fn register_b(i: u32) -> vec4<f32> {
    return register_bp[i];
}
// END storage operands.

// One k of the packed operands: 16 rows of A and 16 columns of B.
struct Panel {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    b0: vec4<f32>,
    b1: vec4<f32>,
    b2: vec4<f32>,
    b3: vec4<f32>,
}

// 16 rows of A at one k, the same for every invocation of a workgroup.
struct RowsA {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}

// BEGIN plain loads. Where the device has subgroups the engine swaps this
// block for `SUBGROUP_LOADS` (gemm.rs): lanes 0 to 3 of a subgroup load A's
// 4 vec4s and the subgroup broadcasts them.
struct GemmIds {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

// The invocation's lane in its subgroup (unused without subgroups).
fn gemm_lane(ids: GemmIds) -> u32 {
    return 0u;
}

fn register_rows(a: u32, lane: u32) -> RowsA {
    return RowsA(register_a(a), register_a(a + 1u), register_a(a + 2u), register_a(a + 3u));
}
// END plain loads.

fn register_panel(a: u32, b: u32, lane: u32) -> Panel {
    let rows = register_rows(a, lane);
    return Panel(rows.a0, rows.a1, rows.a2, rows.a3, register_b(b), register_b(b + 1u), register_b(b + 2u), register_b(b + 3u));
}

// acc[4i + j] += sum over the 4 panels of a_i * b_j. Summing 4 k per update
// matters on llvmpipe, where every update of a loop-carried accumulator is a
// masked store.
fn outer_product_16x16x4(acc: ptr<function, array<vec4<f32>, 64>>, k0: Panel, k1: Panel, k2: Panel, k3: Panel) {
    (*acc)[0] += k0.a0.x * k0.b0 + k1.a0.x * k1.b0 + k2.a0.x * k2.b0 + k3.a0.x * k3.b0;
    (*acc)[1] += k0.a0.x * k0.b1 + k1.a0.x * k1.b1 + k2.a0.x * k2.b1 + k3.a0.x * k3.b1;
    (*acc)[2] += k0.a0.x * k0.b2 + k1.a0.x * k1.b2 + k2.a0.x * k2.b2 + k3.a0.x * k3.b2;
    (*acc)[3] += k0.a0.x * k0.b3 + k1.a0.x * k1.b3 + k2.a0.x * k2.b3 + k3.a0.x * k3.b3;
    (*acc)[4] += k0.a0.y * k0.b0 + k1.a0.y * k1.b0 + k2.a0.y * k2.b0 + k3.a0.y * k3.b0;
    (*acc)[5] += k0.a0.y * k0.b1 + k1.a0.y * k1.b1 + k2.a0.y * k2.b1 + k3.a0.y * k3.b1;
    (*acc)[6] += k0.a0.y * k0.b2 + k1.a0.y * k1.b2 + k2.a0.y * k2.b2 + k3.a0.y * k3.b2;
    (*acc)[7] += k0.a0.y * k0.b3 + k1.a0.y * k1.b3 + k2.a0.y * k2.b3 + k3.a0.y * k3.b3;
    (*acc)[8] += k0.a0.z * k0.b0 + k1.a0.z * k1.b0 + k2.a0.z * k2.b0 + k3.a0.z * k3.b0;
    (*acc)[9] += k0.a0.z * k0.b1 + k1.a0.z * k1.b1 + k2.a0.z * k2.b1 + k3.a0.z * k3.b1;
    (*acc)[10] += k0.a0.z * k0.b2 + k1.a0.z * k1.b2 + k2.a0.z * k2.b2 + k3.a0.z * k3.b2;
    (*acc)[11] += k0.a0.z * k0.b3 + k1.a0.z * k1.b3 + k2.a0.z * k2.b3 + k3.a0.z * k3.b3;
    (*acc)[12] += k0.a0.w * k0.b0 + k1.a0.w * k1.b0 + k2.a0.w * k2.b0 + k3.a0.w * k3.b0;
    (*acc)[13] += k0.a0.w * k0.b1 + k1.a0.w * k1.b1 + k2.a0.w * k2.b1 + k3.a0.w * k3.b1;
    (*acc)[14] += k0.a0.w * k0.b2 + k1.a0.w * k1.b2 + k2.a0.w * k2.b2 + k3.a0.w * k3.b2;
    (*acc)[15] += k0.a0.w * k0.b3 + k1.a0.w * k1.b3 + k2.a0.w * k2.b3 + k3.a0.w * k3.b3;
    (*acc)[16] += k0.a1.x * k0.b0 + k1.a1.x * k1.b0 + k2.a1.x * k2.b0 + k3.a1.x * k3.b0;
    (*acc)[17] += k0.a1.x * k0.b1 + k1.a1.x * k1.b1 + k2.a1.x * k2.b1 + k3.a1.x * k3.b1;
    (*acc)[18] += k0.a1.x * k0.b2 + k1.a1.x * k1.b2 + k2.a1.x * k2.b2 + k3.a1.x * k3.b2;
    (*acc)[19] += k0.a1.x * k0.b3 + k1.a1.x * k1.b3 + k2.a1.x * k2.b3 + k3.a1.x * k3.b3;
    (*acc)[20] += k0.a1.y * k0.b0 + k1.a1.y * k1.b0 + k2.a1.y * k2.b0 + k3.a1.y * k3.b0;
    (*acc)[21] += k0.a1.y * k0.b1 + k1.a1.y * k1.b1 + k2.a1.y * k2.b1 + k3.a1.y * k3.b1;
    (*acc)[22] += k0.a1.y * k0.b2 + k1.a1.y * k1.b2 + k2.a1.y * k2.b2 + k3.a1.y * k3.b2;
    (*acc)[23] += k0.a1.y * k0.b3 + k1.a1.y * k1.b3 + k2.a1.y * k2.b3 + k3.a1.y * k3.b3;
    (*acc)[24] += k0.a1.z * k0.b0 + k1.a1.z * k1.b0 + k2.a1.z * k2.b0 + k3.a1.z * k3.b0;
    (*acc)[25] += k0.a1.z * k0.b1 + k1.a1.z * k1.b1 + k2.a1.z * k2.b1 + k3.a1.z * k3.b1;
    (*acc)[26] += k0.a1.z * k0.b2 + k1.a1.z * k1.b2 + k2.a1.z * k2.b2 + k3.a1.z * k3.b2;
    (*acc)[27] += k0.a1.z * k0.b3 + k1.a1.z * k1.b3 + k2.a1.z * k2.b3 + k3.a1.z * k3.b3;
    (*acc)[28] += k0.a1.w * k0.b0 + k1.a1.w * k1.b0 + k2.a1.w * k2.b0 + k3.a1.w * k3.b0;
    (*acc)[29] += k0.a1.w * k0.b1 + k1.a1.w * k1.b1 + k2.a1.w * k2.b1 + k3.a1.w * k3.b1;
    (*acc)[30] += k0.a1.w * k0.b2 + k1.a1.w * k1.b2 + k2.a1.w * k2.b2 + k3.a1.w * k3.b2;
    (*acc)[31] += k0.a1.w * k0.b3 + k1.a1.w * k1.b3 + k2.a1.w * k2.b3 + k3.a1.w * k3.b3;
    (*acc)[32] += k0.a2.x * k0.b0 + k1.a2.x * k1.b0 + k2.a2.x * k2.b0 + k3.a2.x * k3.b0;
    (*acc)[33] += k0.a2.x * k0.b1 + k1.a2.x * k1.b1 + k2.a2.x * k2.b1 + k3.a2.x * k3.b1;
    (*acc)[34] += k0.a2.x * k0.b2 + k1.a2.x * k1.b2 + k2.a2.x * k2.b2 + k3.a2.x * k3.b2;
    (*acc)[35] += k0.a2.x * k0.b3 + k1.a2.x * k1.b3 + k2.a2.x * k2.b3 + k3.a2.x * k3.b3;
    (*acc)[36] += k0.a2.y * k0.b0 + k1.a2.y * k1.b0 + k2.a2.y * k2.b0 + k3.a2.y * k3.b0;
    (*acc)[37] += k0.a2.y * k0.b1 + k1.a2.y * k1.b1 + k2.a2.y * k2.b1 + k3.a2.y * k3.b1;
    (*acc)[38] += k0.a2.y * k0.b2 + k1.a2.y * k1.b2 + k2.a2.y * k2.b2 + k3.a2.y * k3.b2;
    (*acc)[39] += k0.a2.y * k0.b3 + k1.a2.y * k1.b3 + k2.a2.y * k2.b3 + k3.a2.y * k3.b3;
    (*acc)[40] += k0.a2.z * k0.b0 + k1.a2.z * k1.b0 + k2.a2.z * k2.b0 + k3.a2.z * k3.b0;
    (*acc)[41] += k0.a2.z * k0.b1 + k1.a2.z * k1.b1 + k2.a2.z * k2.b1 + k3.a2.z * k3.b1;
    (*acc)[42] += k0.a2.z * k0.b2 + k1.a2.z * k1.b2 + k2.a2.z * k2.b2 + k3.a2.z * k3.b2;
    (*acc)[43] += k0.a2.z * k0.b3 + k1.a2.z * k1.b3 + k2.a2.z * k2.b3 + k3.a2.z * k3.b3;
    (*acc)[44] += k0.a2.w * k0.b0 + k1.a2.w * k1.b0 + k2.a2.w * k2.b0 + k3.a2.w * k3.b0;
    (*acc)[45] += k0.a2.w * k0.b1 + k1.a2.w * k1.b1 + k2.a2.w * k2.b1 + k3.a2.w * k3.b1;
    (*acc)[46] += k0.a2.w * k0.b2 + k1.a2.w * k1.b2 + k2.a2.w * k2.b2 + k3.a2.w * k3.b2;
    (*acc)[47] += k0.a2.w * k0.b3 + k1.a2.w * k1.b3 + k2.a2.w * k2.b3 + k3.a2.w * k3.b3;
    (*acc)[48] += k0.a3.x * k0.b0 + k1.a3.x * k1.b0 + k2.a3.x * k2.b0 + k3.a3.x * k3.b0;
    (*acc)[49] += k0.a3.x * k0.b1 + k1.a3.x * k1.b1 + k2.a3.x * k2.b1 + k3.a3.x * k3.b1;
    (*acc)[50] += k0.a3.x * k0.b2 + k1.a3.x * k1.b2 + k2.a3.x * k2.b2 + k3.a3.x * k3.b2;
    (*acc)[51] += k0.a3.x * k0.b3 + k1.a3.x * k1.b3 + k2.a3.x * k2.b3 + k3.a3.x * k3.b3;
    (*acc)[52] += k0.a3.y * k0.b0 + k1.a3.y * k1.b0 + k2.a3.y * k2.b0 + k3.a3.y * k3.b0;
    (*acc)[53] += k0.a3.y * k0.b1 + k1.a3.y * k1.b1 + k2.a3.y * k2.b1 + k3.a3.y * k3.b1;
    (*acc)[54] += k0.a3.y * k0.b2 + k1.a3.y * k1.b2 + k2.a3.y * k2.b2 + k3.a3.y * k3.b2;
    (*acc)[55] += k0.a3.y * k0.b3 + k1.a3.y * k1.b3 + k2.a3.y * k2.b3 + k3.a3.y * k3.b3;
    (*acc)[56] += k0.a3.z * k0.b0 + k1.a3.z * k1.b0 + k2.a3.z * k2.b0 + k3.a3.z * k3.b0;
    (*acc)[57] += k0.a3.z * k0.b1 + k1.a3.z * k1.b1 + k2.a3.z * k2.b1 + k3.a3.z * k3.b1;
    (*acc)[58] += k0.a3.z * k0.b2 + k1.a3.z * k1.b2 + k2.a3.z * k2.b2 + k3.a3.z * k3.b2;
    (*acc)[59] += k0.a3.z * k0.b3 + k1.a3.z * k1.b3 + k2.a3.z * k2.b3 + k3.a3.z * k3.b3;
    (*acc)[60] += k0.a3.w * k0.b0 + k1.a3.w * k1.b0 + k2.a3.w * k2.b0 + k3.a3.w * k3.b0;
    (*acc)[61] += k0.a3.w * k0.b1 + k1.a3.w * k1.b1 + k2.a3.w * k2.b1 + k3.a3.w * k3.b1;
    (*acc)[62] += k0.a3.w * k0.b2 + k1.a3.w * k1.b2 + k2.a3.w * k2.b2 + k3.a3.w * k3.b2;
    (*acc)[63] += k0.a3.w * k0.b3 + k1.a3.w * k1.b3 + k2.a3.w * k2.b3 + k3.a3.w * k3.b3;
}

// Stores the 16 columns from col of one row, those inside C.
fn register_row(p: Matmul, row: u32, col: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    register_store(p, row, col, v0);
    register_store(p, row, col + 4u, v1);
    register_store(p, row, col + 8u, v2);
    register_store(p, row, col + 12u, v3);
}

fn register_store(p: Matmul, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    let base = row * p.n + col;
    let n = p.n - min(col, p.n);
    if n > 0u { register_c[base] = v.x; }
    if n > 1u { register_c[base + 1u] = v.y; }
    if n > 2u { register_c[base + 2u] = v.z; }
    if n > 3u { register_c[base + 3u] = v.w; }
}

// No early return before the K loop: with subgroups every invocation of the
// workgroup takes part in the broadcasts (columns past N read the last
// columns and store nothing).
@compute @workgroup_size(64)
fn matmul_register(ids: GemmIds) {
    let p = register_params;
    let col0 = (ids.wg.x * 64u + ids.lid) * 16u;
    let row0 = ids.wg.y * 16u;
    let lane = gemm_lane(ids);
    // Row strides of the packed operands, in vec4s.
    let m4 = ((p.m + 15u) / 16u) * 4u;
    let n4 = ((p.n + 15u) / 16u) * 4u;
    var acc: array<vec4<f32>, 64>;
    var a = row0 / 4u;
    var b = min(col0 / 4u, n4 - 4u);
    let k4 = (p.k + 3u) / 4u;
    // The packed K is a multiple of 4.
    for (var kk = 0u; kk < k4; kk++) {
        outer_product_16x16x4(&acc, register_panel(a, b, lane), register_panel(a + m4, b + n4, lane), register_panel(a + 2u * m4, b + 2u * n4, lane), register_panel(a + 3u * m4, b + 3u * n4, lane));
        a += 4u * m4;
        b += 4u * n4;
    }
    register_row(p, row0 + 0u, col0, acc[0], acc[1], acc[2], acc[3]);
    register_row(p, row0 + 1u, col0, acc[4], acc[5], acc[6], acc[7]);
    register_row(p, row0 + 2u, col0, acc[8], acc[9], acc[10], acc[11]);
    register_row(p, row0 + 3u, col0, acc[12], acc[13], acc[14], acc[15]);
    register_row(p, row0 + 4u, col0, acc[16], acc[17], acc[18], acc[19]);
    register_row(p, row0 + 5u, col0, acc[20], acc[21], acc[22], acc[23]);
    register_row(p, row0 + 6u, col0, acc[24], acc[25], acc[26], acc[27]);
    register_row(p, row0 + 7u, col0, acc[28], acc[29], acc[30], acc[31]);
    register_row(p, row0 + 8u, col0, acc[32], acc[33], acc[34], acc[35]);
    register_row(p, row0 + 9u, col0, acc[36], acc[37], acc[38], acc[39]);
    register_row(p, row0 + 10u, col0, acc[40], acc[41], acc[42], acc[43]);
    register_row(p, row0 + 11u, col0, acc[44], acc[45], acc[46], acc[47]);
    register_row(p, row0 + 12u, col0, acc[48], acc[49], acc[50], acc[51]);
    register_row(p, row0 + 13u, col0, acc[52], acc[53], acc[54], acc[55]);
    register_row(p, row0 + 14u, col0, acc[56], acc[57], acc[58], acc[59]);
    register_row(p, row0 + 15u, col0, acc[60], acc[61], acc[62], acc[63]);
}

@group(0) @binding(20) var<uniform> tiled_params: Matmul;
@group(0) @binding(21) var<storage, read> tiled_a: array<f32>;
@group(0) @binding(22) var<storage, read> tiled_b: array<f32>;
@group(0) @binding(23) var<storage, read_write> tiled_c: array<f32>;

// 16 deep x 64 wide, as vec4s of 4 consecutive rows (a) or columns (b).
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn matmul_tiled(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = tiled_params;
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let iota = vec4<u32>(0u, 1u, 2u, 3u);
    // Each invocation stages 4 rows of A and 4 columns of B at depth lid / 16.
    let stage_k = lid / 16u;
    let stage_rows = vec4<u32>(row0 + (lid % 16u) * 4u) + iota;
    let stage_cols = vec4<u32>(col0 + (lid % 16u) * 4u) + iota;
    let rows_live = stage_rows < vec4<u32>(p.m);
    let cols_live = stage_cols < vec4<u32>(p.n);
    let a_rows = min(stage_rows, vec4<u32>(p.m - 1u)) * p.k;
    let b_cols = min(stage_cols, vec4<u32>(p.n - 1u));
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        let k = k0 + stage_k;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if k < p.k {
            a = select(vec4<f32>(0.0), vec4<f32>(tiled_a[a_rows.x + k], tiled_a[a_rows.y + k], tiled_a[a_rows.z + k], tiled_a[a_rows.w + k]), rows_live);
            let b_row = k * p.n;
            b = select(vec4<f32>(0.0), vec4<f32>(tiled_b[b_row + b_cols.x], tiled_b[b_row + b_cols.y], tiled_b[b_row + b_cols.z], tiled_b[b_row + b_cols.w]), cols_live);
        }
        tile_a[lid] = a;
        tile_b[lid] = b;
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let av = tile_a[kk * 16u + local.y];
            let bv = tile_b[kk * 16u + local.x];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    let cols = vec4<u32>(col0 + local.x * 4u) + iota;
    let live = cols < vec4<u32>(p.n);
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + local.y * 4u + i;
        if row < p.m {
            let base = row * p.n;
            let v = acc[i];
            if live.x { tiled_c[base + cols.x] = v.x; }
            if live.y { tiled_c[base + cols.y] = v.y; }
            if live.z { tiled_c[base + cols.z] = v.z; }
            if live.w { tiled_c[base + cols.w] = v.w; }
        }
    }
}
