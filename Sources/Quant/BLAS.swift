import CBLAS

/// The OpenBLAS path: f32 projections through `cblas_sgemm` (the accuracy reference for the int8 path).
public enum BLAS {
    /// y[m, n] = x[m, k] · w[n, k]ᵀ (+ y when `accumulate`). Row-major; `w` is a weight stored
    /// [out_features, in_features] as Hugging Face stores it. Leading dimensions default to dense rows.
    public static func matmulTransposedB(
        _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, ldx: Int? = nil, ldw: Int? = nil, ldy: Int? = nil, accumulate: Bool = false
    ) {
        let beta: Float = accumulate ? 1 : 0
        if m == 1 {
            // sgemm is poor for a single row; y = W x.
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(k), 1, w, Int32(ldw ?? k), x, 1, beta, y, 1)
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1,
                        x, Int32(ldx ?? k), w, Int32(ldw ?? k), beta, y, Int32(ldy ?? n))
        }
    }

    /// C[m, n] = alpha · A[m, k] · B (B is [k, n], or [n, k] transposed when `transB`) + beta · C, row-major
    /// with explicit leading dimensions.
    public static func gemm(transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// OpenBLAS's own thread count for subsequent calls.
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }
    public static var threads: Int { Int(openblas_get_num_threads()) }
}
