/// A dense row-major f32 matrix [rows, cols], kept alive by `owner` (a mapped file or a FloatBuffer).
public struct Matrix: @unchecked Sendable {
    public let pointer: UnsafePointer<Float>
    public let rows: Int
    public let cols: Int
    public let owner: AnyObject

    public init(pointer: UnsafePointer<Float>, rows: Int, cols: Int, owner: AnyObject) {
        self.pointer = pointer; self.rows = rows; self.cols = cols; self.owner = owner
    }

    public init(_ buffer: FloatBuffer, rows: Int, cols: Int) {
        precondition(buffer.count == rows * cols)
        self.init(pointer: UnsafePointer(buffer.pointer), rows: rows, cols: cols, owner: buffer)
    }

    public func row(_ r: Int) -> UnsafePointer<Float> { pointer + r * cols }
}

/// A projection y = x · Wᵀ with W [out_features, in_features], stored as f32 or as int8 (Q8_0).
public enum Linear: @unchecked Sendable {
    case f32(Matrix)
    case q8_0(PackedQ8Matrix)

    public var outFeatures: Int {
        switch self {
        case .f32(let m): return m.rows
        case .q8_0(let p): return p.rows
        }
    }

    public var inFeatures: Int {
        switch self {
        case .f32(let m): return m.cols
        case .q8_0(let p): return p.cols
        }
    }

    /// Bytes the weights occupy in memory.
    public var byteCount: Int {
        switch self {
        case .f32(let m): return m.rows * m.cols * 4
        case .q8_0(let p): return p.byteCount
        }
    }

    public var storage: String {
        switch self {
        case .f32: return "F32"
        case .q8_0: return "Q8_0"
        }
    }

    /// y[rows, out] (+)= x[rows, in] · Wᵀ, through `engine`.
    @inline(__always)
    public func apply(_ x: PreparedInput, _ y: UnsafeMutablePointer<Float>, ldy: Int? = nil, accumulate: Bool = false,
                      engine: GEMMEngine) {
        engine.multiply(x, self, y, ldy: ldy ?? outFeatures, accumulate: accumulate)
    }
}
