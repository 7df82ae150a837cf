package pgnode

// Internal helpers exposed to the external test package.
var (
	ParseProgress    = parseProgress
	QuoteConf        = quoteConf
	UnquoteConf      = unquoteConf
	ParseControlData = parseControlData
	SplitDynamic     = splitDynamic
)
