import Foundation

/// A progress bar on a terminal (rows done/total, rate, ETA), plain periodic lines otherwise (logs, CI).
final class ProgressBar {
    let label: String
    let isTerminal = isatty(STDERR_FILENO) != 0
    private var last = 0.0
    private var drawn = false

    init(label: String) { self.label = label }

    func update(done: Int, total: Int, detail: String, seconds: Double) {
        let now = Date().timeIntervalSince1970
        let interval = isTerminal ? 0.2 : 10
        guard now - last >= interval || done == total else { return }
        last = now
        let eta = done > 0 ? seconds / Double(done) * Double(total - done) : 0
        let pct = total > 0 ? Double(done) / Double(total) : 1
        if isTerminal {
            let width = 30, filled = Int(pct * Double(width))
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            FileHandle.standardError.write(Data(String(format: "\r%@ %@ %d/%d %@, ETA %@   ", label, bar, done, total, detail, Self.time(eta)).utf8))
            drawn = true
        } else {
            note(String(format: "%@: %d/%d (%.0f%%) %@, ETA %@", label, done, total, 100 * pct, detail, Self.time(eta)))
        }
    }

    func finish() { if drawn { FileHandle.standardError.write(Data("\n".utf8)) } }

    static func time(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}
