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

    /// OpenBLAS's own thread count for subsequent calls.
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }
    public static var threads: Int { Int(openblas_get_num_threads()) }
}
