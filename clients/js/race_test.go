//go:build race

package js_test

// raceEnabled builds the gateway under test with -race when the tests run
// with -race, so the black-box run also hunts data races in the server.
const raceEnabled = true
