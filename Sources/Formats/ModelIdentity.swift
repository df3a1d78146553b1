/// Model identities as recorded with shards, probes and residual files (Model computes the fingerprint,
/// Probe and Extraction compare the recorded strings).
public enum ModelIdentity {
    /// Prefix of the weights fingerprint (`LlamaWeights.fingerprint`: every matrix in canonical Q8_0 form).
    public static let fingerprintPrefix = "weights-v2:"
    /// The first fingerprint (llamaprobe 0.1.0 before v2): configuration and norm weights only, blind to
    /// changes of the projections alone (a merged LoRA).
    public static let olderFingerprintPrefix = "weights-sha256:"
    public static func isImported(_ s: String) -> Bool { s.hasPrefix("imported:") }
    public static func isFingerprint(_ s: String) -> Bool { s.hasPrefix(fingerprintPrefix) }

    /// Why two recorded identities differ, in words: another checkpoint, or one recorded by an older
    /// fingerprint that cannot be compared.
    public static func differenceNote(_ a: String, _ b: String) -> String {
        if a.hasPrefix(olderFingerprintPrefix) != b.hasPrefix(olderFingerprintPrefix) {
            return "one was recorded with the older fingerprint (norm weights only), which cannot be compared with \(fingerprintPrefix)…; re-extract with this version"
        }
        return "another checkpoint"
    }
}
