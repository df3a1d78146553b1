import CBLAS

/// The OpenBLAS path: f32 projections through `cblas_sgemm` (the accuracy reference for the int8 path).
///
/// OpenBLAS always runs single-threaded here. Its own threading splits a product differently for each
/// thread count, and the edge tiles of its kernels round differently from the inner ones: with 2 threads
/// instead of 1 a few percent of the values of a 301×64×64 product change in the last bits. Parallel
/// products therefore go through `matmulTransposedB(…, pool:)`, which cuts the output into blocks of fixed
/// size at fixed offsets, each computed by one single-threaded call: every value is computed by the same
/// call shape, whatever the number of threads (results do not depend on `--threads`).
public enum BLAS {
    /// OpenBLAS pinned to one thread, once per process, before the first product.
    private static let singleThreaded: Void = { openblas_set_num_threads(1) }()

    /// Output block of the parallel product: `rowBlock` rows of x by `colBlock` rows of w.
    public static let rowBlock = 256
    public static let colBlock = 256

    /// y[m, n] = x[m, k] · w[n, k]ᵀ (+ y when `accumulate`) across `pool`, in fixed output blocks (the
    /// result does not depend on the pool's thread count). Row-major; `w` is a weight stored
    /// [out_features, in_features] as Hugging Face stores it. Leading dimensions default to dense rows.
    public static func matmulTransposedB(
        _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, ldx: Int? = nil, ldw: Int? = nil, ldy: Int? = nil, accumulate: Bool = false,
        pool: ThreadPool
    ) {
        if m <= 0 || n <= 0 { return }
        let ldx = ldx ?? k, ldw = ldw ?? k, ldy = ldy ?? n
        let mBlocks = (m + rowBlock - 1) / rowBlock, nBlocks = (n + colBlock - 1) / colBlock
        pool.parallelFor(mBlocks * nBlocks) { item in
            let r0 = item / nBlocks * rowBlock, c0 = item % nBlocks * colBlock
            matmulTransposedB(x + r0 * ldx, w + c0 * ldw, y + r0 * ldy + c0, m: min(rowBlock, m - r0),
                              n: min(colBlock, n - c0), k: k, ldx: ldx, ldw: ldw, ldy: ldy, accumulate: accumulate)
        }
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ (+ y when `accumulate`) as one single-threaded call on the calling thread.
    public static func matmulTransposedB(
        _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, ldx: Int? = nil, ldw: Int? = nil, ldy: Int? = nil, accumulate: Bool = false
    ) {
        _ = singleThreaded
        let beta: Float = accumulate ? 1 : 0
        if m == 1 {
            // sgemm is poor for a single row; y = W x.
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(k), 1, w, Int32(ldw ?? k), x, 1, beta, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                        x, Int32(ldx ?? k), w, Int32(ldw ?? k), beta, y, Int32(ldy ?? n))
        }
    }

    /// C[m, n] = alpha · op(A) · op(B) + beta · C in float64, row-major (op(A) is [m, k]: A is [k, m] when
    /// `transA`; op(B) is [k, n]: B is [n, k] when `transB`); one single-threaded call on the calling thread.
    public static func dgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double, a: UnsafePointer<Double>, lda: Int,
                             b: UnsafePointer<Double>, ldb: Int, beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        _ = singleThreaded
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C[m, n] = alpha · A[m, k] · B (B is [k, n], or [n, k] transposed when `transB`) + beta · C, row-major
    /// with explicit leading dimensions; one single-threaded call on the calling thread.
    public static func gemm(transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        _ = singleThreaded
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
