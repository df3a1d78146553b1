import Foundation
import Quant

/// `--recipe logistic`: what a careful researcher would fit — features standardized on the training rows,
/// multinomial logistic regression with an L2 penalty on the weights (not the intercepts), minimised to
/// convergence with L-BFGS in float64; scikit-learn's `LogisticRegression(C=C)` (lbfgs, multinomial) on
/// `StandardScaler`-transformed features. Deterministic (no randomness but the internal folds' seed).
public enum LogisticProbe {
    /// The strength grid of the internal cross-validation: np.logspace(-4, 4, 9).
    public static let grid: [Double] = (-4...4).map { pow(10, Double($0)) }

    /// The summary's recipe line.
    public static func description(c: Double?, seed: Int) -> String {
        "multinomial logistic regression (softmax cross-entropy) on features standardized with the training rows' mean and "
            + "standard deviation, L2 penalty ½‖W‖² on the weights (not the intercepts) with strength "
            + (c.map { "C = \($0) (--l2-strength)" } ?? "C chosen per layer by stratified 5-fold cross-validation on the training rows (StratifiedKFold(shuffle=True, random_state=\(seed))) over 1e-4, 1e-3, …, 1e4 (best mean accuracy, the smallest C on ties)")
            + ", as scikit-learn's LogisticRegression(C); L-BFGS in float64 to a gradient below 1e-10; the standardization folded into "
            + "the written weights (W/σ, b − (W/σ)·μ), so the probes are Linear layers on the raw activations (their sigmoid outputs are "
            + "monotone in the softmax logits, so predictions are the softmax's, but they are not probabilities)."
    }

    public struct Fit: Sendable {
        /// [classes, d] and [classes] on the raw features (the standardization folded in).
        public var weight: [Double]
        public var bias: [Double]
        public var c: Double
        public var iterations: Int
        public var converged: Bool
        /// The minimised objective: mean cross-entropy on the training rows + ‖W‖² / (2 C n).
        public var objective: Double
    }

    /// Mean and population standard deviation of every feature over `rows` (StandardScaler; a constant
    /// feature gets scale 1).
    static func standardization(_ x: [Double], d: Int, rows: [Int]) -> (mean: [Double], scale: [Double]) {
        var mean = [Double](repeating: 0, count: d), sq = [Double](repeating: 0, count: d)
        for r in rows { for j in 0..<d { mean[j] += x[r * d + j] } }
        let n = Double(max(rows.count, 1))
        for j in 0..<d { mean[j] /= n }
        for r in rows { for j in 0..<d { let v = x[r * d + j] - mean[j]; sq[j] += v * v } }
        let scale = sq.map { v -> Double in let s = (v / n).squareRoot(); return s > 0 ? s : 1 }
        return (mean, scale)
    }

    /// Fits on `rows` of x ([n, d] row-major, float64) with labels y, strength `c` (scikit-learn's C).
    /// `start`: weights in the standardized space to begin from (warm start along a grid).
    public static func fit(x: [Double], y: [Int], d: Int, classes k: Int, rows: [Int], c: Double,
                           tolerance: Double = 1e-10, maxIterations: Int = 5000, start: [Double]? = nil) -> (fit: Fit, standardized: [Double]) {
        let (mu, sigma) = standardization(x, d: d, rows: rows)
        let n = rows.count
        var z = [Double](repeating: 0, count: n * d)
        for (i, r) in rows.enumerated() { for j in 0..<d { z[i * d + j] = (x[r * d + j] - mu[j]) / sigma[j] } }
        let labels = rows.map { y[$0] }
        let dim = k * d + k
        // f = mean cross-entropy + ‖W‖² / (2 C n): scikit-learn's C·Σ loss + ½‖W‖², divided by C·n.
        let lambda = 1 / (c * Double(n))
        var logits = [Double](repeating: 0, count: n * k)
        var residual = [Double](repeating: 0, count: n * k)
        // logits = Z·Wᵀ + b and ∂W = Rᵀ·Z through OpenBLAS dgemm (single-threaded: deterministic).
        func objective(_ p: [Double], _ g: inout [Double]) -> Double {
            z.withUnsafeBufferPointer { zp in
                p.withUnsafeBufferPointer { pp in
                    logits.withUnsafeMutableBufferPointer { lp in
                        BLAS.dgemm(transA: false, transB: true, m: n, n: k, k: d, alpha: 1, a: zp.baseAddress!, lda: d,
                                   b: pp.baseAddress!, ldb: d, beta: 0, c: lp.baseAddress!, ldc: k)
                    }
                }
            }
            var loss = 0.0
            for a in 0..<k { g[k * d + a] = 0 }
            for i in 0..<n {
                var mx = -Double.infinity
                for a in 0..<k {
                    logits[i * k + a] += p[k * d + a]
                    mx = max(mx, logits[i * k + a])
                }
                var sum = 0.0
                for a in 0..<k { sum += exp(logits[i * k + a] - mx) }
                let lse = mx + log(sum)
                loss += lse - logits[i * k + labels[i]]
                for a in 0..<k {
                    let r = (exp(logits[i * k + a] - lse) - (a == labels[i] ? 1 : 0)) / Double(n)
                    residual[i * k + a] = r
                    g[k * d + a] += r
                }
            }
            residual.withUnsafeBufferPointer { rp in
                z.withUnsafeBufferPointer { zp in
                    g.withUnsafeMutableBufferPointer { gp in
                        BLAS.dgemm(transA: true, transB: false, m: k, n: d, k: n, alpha: 1, a: rp.baseAddress!, lda: k,
                                   b: zp.baseAddress!, ldb: d, beta: 0, c: gp.baseAddress!, ldc: d)
                    }
                }
            }
            var penalty = 0.0
            for i in 0..<(k * d) { penalty += p[i] * p[i]; g[i] += lambda * p[i] }
            return loss / Double(n) + 0.5 * lambda * penalty
        }
        var p = start ?? [Double](repeating: 0, count: dim)
        var g = [Double](repeating: 0, count: dim)
        var f = objective(p, &g)
        let m = 10
        var sHist: [[Double]] = [], yHist: [[Double]] = [], rho: [Double] = []
        var iterations = 0, converged = false
        func dot(_ a: [Double], _ b: [Double]) -> Double { var s = 0.0; for i in 0..<a.count { s += a[i] * b[i] }; return s }
        while iterations < maxIterations {
            if g.map(abs).max() ?? 0 <= tolerance { converged = true; break }
            // two-loop recursion: direction = −H·g
            var q = g
            var alphas = [Double](repeating: 0, count: sHist.count)
            for i in stride(from: sHist.count - 1, through: 0, by: -1) {
                alphas[i] = rho[i] * dot(sHist[i], q)
                for t in 0..<dim { q[t] -= alphas[i] * yHist[i][t] }
            }
            if let s = sHist.last, let yv = yHist.last {
                let gamma = dot(s, yv) / dot(yv, yv)
                for t in 0..<dim { q[t] *= gamma }
            }
            for i in 0..<sHist.count {
                let beta = rho[i] * dot(yHist[i], q)
                for t in 0..<dim { q[t] += sHist[i][t] * (alphas[i] - beta) }
            }
            var dir = q.map { -$0 }
            var slope = dot(g, dir)
            if slope >= 0 { dir = g.map { -$0 }; slope = -dot(g, g); sHist = []; yHist = []; rho = [] }
            // backtracking (Armijo) line search
            var step = 1.0
            var pNew = p, gNew = g, fNew = f
            var accepted = false
            for _ in 0..<60 {
                for t in 0..<dim { pNew[t] = p[t] + step * dir[t] }
                fNew = objective(pNew, &gNew)
                if fNew <= f + 1e-4 * step * slope { accepted = true; break }
                step *= 0.5
            }
            iterations += 1
            if !accepted { break }
            let s = (0..<dim).map { pNew[$0] - p[$0] }, yv = (0..<dim).map { gNew[$0] - g[$0] }
            let sy = dot(s, yv)
            if sy > 1e-16 {
                sHist.append(s); yHist.append(yv); rho.append(1 / sy)
                if sHist.count > m { sHist.removeFirst(); yHist.removeFirst(); rho.removeFirst() }
            }
            let change = abs(f - fNew)
            p = pNew; g = gNew; f = fNew
            if change <= 1e-16 * max(abs(f), 1) { converged = g.map(abs).max() ?? 0 <= tolerance * 1e3; break }
        }
        // Fold the standardization into the weights: W' = W / σ, b' = b − W'·μ.
        var w = [Double](repeating: 0, count: k * d), b = [Double](repeating: 0, count: k)
        for a in 0..<k {
            var shift = 0.0
            for j in 0..<d { w[a * d + j] = p[a * d + j] / sigma[j]; shift += w[a * d + j] * mu[j] }
            b[a] = p[k * d + a] - shift
        }
        return (Fit(weight: w, bias: b, c: c, iterations: iterations, converged: converged, objective: f), p)
    }

    /// Accuracy of raw-feature weights on `rows` (argmax of the logits, first maximum on ties).
    public static func accuracy(_ f: Fit, x: [Double], y: [Int], d: Int, classes k: Int, rows: [Int]) -> Double {
        guard !rows.isEmpty else { return 0 }
        var correct = 0
        for r in rows {
            var best = 0, bestValue = -Double.infinity
            for a in 0..<k {
                var s = f.bias[a]
                for j in 0..<d { s += f.weight[a * d + j] * x[r * d + j] }
                if s > bestValue { bestValue = s; best = a }
            }
            if best == y[r] { correct += 1 }
        }
        return Double(correct) / Double(rows.count)
    }

    /// The strength by internal stratified `folds`-fold cross-validation on the training rows (scikit-learn's
    /// StratifiedKFold(shuffle=True, random_state=seed)) over `grid`: the best mean accuracy, the smallest C on
    /// ties; then the fit on every training row.
    public static func crossValidated(x: [Double], y: [Int], d: Int, classes k: Int, rows: [Int], folds: Int = 5, seed: UInt32,
                                      grid: [Double] = grid) throws -> (fit: Fit, scores: [Double]) {
        let f = try StratifiedKFold.folds(labels: rows.map { y[$0] }, k: min(folds, rows.count), seed: seed)
        var scores = [Double](repeating: 0, count: grid.count)
        for fold in f {
            let inFold = Set(fold)
            let fitRows = rows.indices.filter { !inFold.contains($0) }.map { rows[$0] }
            let valRows = fold.map { rows[$0] }
            var warm: [Double]? = nil
            for (gi, c) in grid.enumerated() {
                let (fit, p) = Self.fit(x: x, y: y, d: d, classes: k, rows: fitRows, c: c, tolerance: 1e-6, start: warm)
                warm = p
                scores[gi] += accuracy(fit, x: x, y: y, d: d, classes: k, rows: valRows) / Double(f.count)
            }
        }
        var best = 0
        for i in scores.indices where scores[i] > scores[best] + 1e-12 { best = i }
        return (Self.fit(x: x, y: y, d: d, classes: k, rows: rows, c: grid[best]).fit, scores)
    }
}

/// Which probes `train` fits.
public enum ProbeRecipe: String, Sendable, CaseIterable {
    /// The reference recipe (Linear + sigmoid, BCELoss, Adam, ReduceLROnPlateau).
    case reference
    /// Standardized multinomial logistic regression (LogisticProbe); its probes are written.
    case logistic
    /// The reference probes are written; the logistic regression is reported beside them.
    case both
}
