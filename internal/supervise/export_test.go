package supervise

// SetAfterFork sets the hook run between fork and wait (see afterFork).
func SetAfterFork(f func()) { afterFork = f }
