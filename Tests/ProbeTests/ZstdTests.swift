import Foundation
import Probe
import Testing

@Suite struct ZstdTests {
    @Test func roundTripWithChecksum() throws {
        let input = (0..<200_000).map { UInt8(truncatingIfNeeded: ($0 * 7) ^ ($0 >> 5)) }
        for threads in [0, 2] {
            let z = try Zstd.compress(input, level: 3, threads: threads)
            #expect(z.count < input.count / 2)
            #expect(try Zstd.decompress(z) == input)
            var bad = z
            bad[bad.count / 2] ^= 0xFF
            #expect(throws: ZstdError.self) { _ = try Zstd.decompress(bad) }
            #expect(throws: ZstdError.self) { _ = try Zstd.decompress(Array(z.prefix(z.count - 3))) }
        }
        #expect(throws: ZstdError.self) { _ = try Zstd.decompress([1, 2, 3, 4, 5, 6, 7, 8]) }
        #expect(try Zstd.decompress(try Zstd.compress([])) == [])
    }
}
