"""The functions a query on ``POST /api/sql`` may call: one reviewed allowlist, and nothing else.

Why an allowlist: ClickHouse has about 1,900 functions and every release adds
some. A few read files (``file``), the network (``url``, ``s3``, ``remote``,
the AI functions), settings (``getSetting``), the host (``hostName``, ``FQDN``,
``uptime``, ``version``), dictionaries (``dictGet*``, ``joinGet``) or the
session (``currentUser``), and some sleep or throw on purpose. Worse, ClickHouse
*evaluates* constant expressions while it analyses a query, before any row
limit applies, so a denylist would have to be complete on the day it is
written and stay complete through every upgrade. An allowlist fails closed: a
function added by a later ClickHouse is refused until someone reviews it here.

How it was built: from ``SELECT name, is_aggregate, categories FROM
system.functions`` of chdb 4.4 (ClickHouse 26.9), one category at a time,
reviewed by hand. Each block below says why its category is in and what was
taken out of it. Categories left out entirely: Dictionary and Embedded
Dictionary (read dictionaries and geobase files), Introspection (reads the
server binary and its symbols), Internal (the analyser's own helpers), AI
(calls out to model providers), Machine Learning (models named in the server
config), Encryption (not needed; keys would travel in query text), Time
Series, NumericIndexedVector, QBit and Financial (not needed here), and most of
Other (session, host, settings and server introspection; ``file``, ``sleep*``,
``throwIf``, ``getSetting``, ``joinGet``, ``hasColumnInTable``...).

Names compare case-insensitively: ClickHouse resolves some names in any case
(``COUNT``, ``Sum``) and every case pair in this version (``timeZone`` /
``timezone``, ``hostName`` / ``hostname``...) is one function under two
spellings, so folding case can neither let a refused function through nor
refuse an allowed one. Aggregates may carry combinators (``sumIf``,
``uniqMergeState``, ``quantilesArrayIf``...), which only change how an
aggregate reads its rows.

No I/O here: this module is data and two lookups.
"""

from __future__ import annotations


def _names(block: str) -> frozenset[str]:
    return frozenset(block.split())


# Aggregates, and window functions, which ClickHouse lists as aggregates
# (row_number, rank, lag, lead, nth_value, ...): statistics over rows already
# read. Out: aggThrow (throws on purpose), flameGraph (stack traces),
# groupFormat (renders rows through an output format; some formats read files
# named by settings).
AGGREGATE = _names(
    """
    analysisOfVariance anova any any_respect_nulls any_value any_value_respect_nulls anyHeavy anyLast
    anyLast_respect_nulls anyLastRespectNulls anyRespectNulls anyValueRespectNulls approx_top_count approx_top_k
    approx_top_sum argAndMax argAndMin argMax argMin array_agg array_concat_agg avg avgWeighted BIT_AND BIT_OR
    BIT_XOR boundingRatio categoricalInformationValue contingency corr corrMatrix corrStable count COVAR_POP
    COVAR_SAMP covarPop covarPopMatrix covarPopStable covarSamp covarSampMatrix covarSampStable cramersV
    cramersVBiasCorrected cume_dist deltaSum deltaSumTimestamp dense_rank denseRank distinctDynamicTypes
    distinctJSONPaths distinctJSONPathsAndTypes entropy estimateCompressionRatio exponentialMovingAverage
    exponentialTimeDecayedAvg exponentialTimeDecayedCount exponentialTimeDecayedMax exponentialTimeDecayedSum
    first_value first_value_respect_nulls firstValueRespectNulls gini group_concat groupArray groupArrayInsertAt
    groupArrayIntersect groupArrayLast groupArrayMovingAvg groupArrayMovingSum groupArraySample groupArraySorted
    groupBitAnd groupBitmap groupBitmapAnd groupBitmapOr groupBitmapXor groupBitOr groupBitXor groupConcat
    groupNumericIndexedVector groupUniqArray histogram intervalLengthSum kolmogorovSmirnovTest kurtPop kurtSamp
    lag lagInFrame largestTriangleThreeBuckets last_value last_value_respect_nulls lastValueRespectNulls lead
    leadInFrame lttb mannWhitneyUTest max max_by maxIntersections maxIntersectionsPosition maxMappedArrays
    meanZTest median medianBFloat16 medianBFloat16Weighted medianDD medianDeterministic medianExact
    medianExactHigh medianExactLow medianExactWeighted medianExactWeightedInterpolated medianGK
    medianInterpolatedWeighted medianTDigest medianTDigestWeighted medianTiming medianTimingWeighted
    mergedJSONPatch min min_by minMappedArrays nonNegativeDerivative nothing nothingNull nothingUInt64 nth_value
    ntile percent_rank percentRank quantile quantileBFloat16 quantileBFloat16Weighted quantileDD
    quantileDeterministic quantileExact quantileExactExclusive quantileExactHigh quantileExactInclusive
    quantileExactLow quantileExactWeighted quantileExactWeightedInterpolated quantileGK
    quantileInterpolatedWeighted quantilePrometheusHistogram quantiles quantilesBFloat16
    quantilesBFloat16Weighted quantilesDD quantilesDeterministic quantilesExact quantilesExactExclusive
    quantilesExactHigh quantilesExactInclusive quantilesExactLow quantilesExactWeighted
    quantilesExactWeightedInterpolated quantilesGK quantilesInterpolatedWeighted quantilesPrometheusHistogram
    quantilesTDigest quantilesTDigestWeighted quantilesTiming quantilesTimingWeighted quantileTDigest
    quantileTDigestWeighted quantileTiming quantileTimingWeighted rank rankCorr regr_avgx regr_avgy regr_count
    regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy retention row_number sequenceCount
    sequenceMatch sequenceMatchEvents sequenceNextNode simpleLinearRegression singleValueOrNull skewPop skewSamp
    sparkbar sparkBar ST_AsMVT STD STDDEV STDDEV_POP STDDEV_SAMP stddevPop stddevPopStable stddevSamp
    stddevSampStable string_agg studentTTest studentTTestOneSample sum sumCount sumKahan sumMapFiltered
    sumMapFilteredWithOverflow sumMappedArrays sumMapWithOverflow sumWithOverflow theilsU timeSeriesAvgToGrid
    timeSeriesBottomKMasks timeSeriesChangesToGrid timeSeriesCountToGrid timeSeriesDeltaToGrid
    timeSeriesDerivToGrid timeSeriesGroupArray timeSeriesIncreaseToGrid timeSeriesInstantDeltaToGrid
    timeSeriesInstantRateToGrid timeSeriesLastToGrid timeSeriesLastTwoSamples timeSeriesLimitKMasks
    timeSeriesMaxToGrid timeSeriesMinToGrid timeSeriesPredictLinearToGrid timeSeriesRateToGrid
    timeSeriesResampleToGridWithStaleness timeSeriesResetsToGrid timeSeriesSumToGrid
    timeSeriesTimestampOfMaxToGrid timeSeriesTimestampOfMinToGrid timeSeriesTopKMasks topK topKWeighted uniq
    uniqCombined uniqCombined64 uniqExact uniqHLL12 uniqUpTo VAR_POP VAR_SAMP varPop varPopStable varSamp
    varSampStable welchTTest windowFunnel
    """
)

# Numbers in, numbers out: Arithmetic (the operators + - * / % as the AST names
# them: plus, minus, multiply, divide, modulo, intDiv, negate), Mathematical,
# Rounding, Bit. Out: the kql* helpers of the Kusto dialect.
NUMBERS = _names(
    """
    abs acos acosh asin asinh atan atan2 atanh avg2 bitAnd bitCount bitHammingDistance bitNot bitOr
    bitRotateLeft bitRotateRight bitShiftLeft bitShiftRight bitSlice bitTest bitTestAll bitTestAny bitXor
    byteSwap cbrt ceil cos cosh degrees divide divideDecimal divideOrNull e erf erfc exp exp10 exp2 factorial
    floor gcd hypot ifNotFinite intDiv intDivOrNull intDivOrZero intExp10 intExp2 isFinite isInfinite isNaN
    isPrime isProbablePrime lcm lgamma log log10 log1p log2 max2 midpoint min2 minus modulo moduloLegacy
    moduloOrNull moduloOrZero multiply multiplyDecimal negate pi plus positiveModulo positiveModuloOrNull pow
    proportionsZTest radians round roundAge roundBankers roundDown roundDuration roundToExp2 sigmoid sign sin
    sinh sqr sqrt tan tanh tgamma trunc widthBucket
    """
)

# Comparison, Logical, Conditional and Null: the operators as the AST names them
# (equals, less, and, or, not, in, notIn, globalIn, if, multiIf, isNull, ...).
LOGIC = _names(
    """
    and assumeNotNull clamp coalesce equals firstNonDefault globalIn globalInIgnoreSet globalNotIn
    globalNotInIgnoreSet globalNotNullIn globalNotNullInIgnoreSet globalNullIn globalNullInIgnoreSet greater
    greaterOrEquals greatest if ifNull in inIgnoreSet isDistinctFrom isNotDistinctFrom isNotNull isNull
    isNullable isZeroOrNull least less lessOrEquals multiIf not notEquals notIn notInIgnoreSet notNullIn
    notNullInIgnoreSet nullIf nullIn nullInIgnoreSet or toNullable xor
    """
)

# String, String Search, String Replacement, String Splitting and Encoding: text
# in, text out (like, match, concat, lower, splitByChar, hex, ...). Out: chdb
# (the engine's version), multiFuzzyMatch* (approximate Hyperscan patterns, whose
# compilation can take minutes outside any query limit).
STRINGS = _names(
    """
    alphaTokens appendTrailingCharIfAbsent arrayStringConcat ascii base32Decode base32Encode base58Decode
    base58Encode base64Decode base64Encode base64URLDecode base64URLEncode basename bin bitmaskToArray
    bitmaskToList bitPositionsToArray byteHammingDistance caseFoldUTF8 char compareSubstrings concat
    concatAssumeInjective concatWithSeparator concatWithSeparatorAssumeInjective conv convertCharset
    countMatches countMatchesCaseInsensitive countSubstrings countSubstringsCaseInsensitive
    countSubstringsCaseInsensitiveUTF8 CRC32 CRC32IEEE CRC64 damerauLevenshteinDistance decodeHTMLComponent
    decodeXMLComponent editDistance editDistanceUTF8 encodeXMLComponent endsWith endsWithCaseInsensitive
    endsWithCaseInsensitiveUTF8 endsWithUTF8 extract extractAll extractAllGroupsHorizontal
    extractAllGroupsVertical extractGroups extractTextFromHTML firstLine format hasAllTokens hasAnyTokens
    hasPhrase hasSubsequence hasSubsequenceCaseInsensitive hasSubsequenceCaseInsensitiveUTF8 hasSubsequenceUTF8
    hasToken hasTokenCaseInsensitive hasTokenCaseInsensitiveOrNull hasTokenOrNull hex highlight hilbertDecode
    hilbertEncode ilike initcap initcapUTF8 isValidASCII isValidUTF8 jaroSimilarity jaroWinklerSimilarity left
    leftPad leftPadUTF8 leftUTF8 lengthUTF8 like locate lower lowerUTF8 match matchCaseInsensitive mortonDecode
    mortonEncode multiMatchAllIndices multiMatchAny multiMatchAnyIndex multiSearchAllPositions
    multiSearchAllPositionsCaseInsensitive multiSearchAllPositionsCaseInsensitiveUTF8
    multiSearchAllPositionsUTF8 multiSearchAny multiSearchAnyCaseInsensitive multiSearchAnyCaseInsensitiveUTF8
    multiSearchAnyUTF8 multiSearchFirstIndex multiSearchFirstIndexCaseInsensitive
    multiSearchFirstIndexCaseInsensitiveUTF8 multiSearchFirstIndexUTF8 multiSearchFirstPosition
    multiSearchFirstPositionCaseInsensitive multiSearchFirstPositionCaseInsensitiveUTF8
    multiSearchFirstPositionUTF8 naiveBayesNgrams naturalSortKey ngramDistance ngramDistanceCaseInsensitive
    ngramDistanceCaseInsensitiveUTF8 ngramDistanceUTF8 ngrams ngramSearch ngramSearchCaseInsensitive
    ngramSearchCaseInsensitiveUTF8 ngramSearchUTF8 normalizeUTF8NFC normalizeUTF8NFD normalizeUTF8NFKC
    normalizeUTF8NFKCCasefold normalizeUTF8NFKD notILike notLike notMatch notMatchCaseInsensitive overlay
    overlayUTF8 position positionCaseInsensitive positionCaseInsensitiveUTF8 positionUTF8 printf regexpExtract
    regexpPosition regexpQuoteMeta removeDiacriticsUTF8 repeat replaceAll replaceOne replaceRegexpAll
    replaceRegexpOne reverseBySeparator reverseUTF8 right rightPad rightPadUTF8 rightUTF8 soundex space
    sparseGrams sparseGramsHashes sparseGramsHashesUTF8 sparseGramsUTF8 splitByChar splitByNonAlpha
    splitByRegexp splitByString splitByWhitespace sqidDecode sqidEncode startsWith startsWithCaseInsensitive
    startsWithCaseInsensitiveUTF8 startsWithUTF8 stringBytesEntropy stringBytesUniq stringJaccardIndex
    stringJaccardIndexUTF8 substring substringIndex substringIndexUTF8 substringUTF8 tokens tokensForLikePattern
    toValidUTF8 translate translateUTF8 trimBoth trimLeft trimRight tryBase32Decode tryBase58Decode
    tryBase64Decode tryBase64URLDecode unbin unhex upper upperUTF8
    """
)

# Dates and Times, Time Window: flow records are time series. now() and today()
# read the clock, which a dashboard shows anyway. Out: timezone and
# serverTimezone (the host's configuration; toTimeZone and timezoneOf stay).
DATES = _names(
    """
    addDate addDays addHours addInterval addMicroseconds addMilliseconds addMinutes addMonths addNanoseconds
    addQuarters addSeconds addTupleOfIntervals addWeeks addYears age changeDay changeHour changeMinute
    changeMonth changeSecond changeYear dateDiff dateName dateTrunc formatDateTime formatDateTimeInJodaSyntax
    fromDaysSinceYearZero fromDaysSinceYearZero32 fromModifiedJulianDay fromModifiedJulianDayOrNull
    fromUnixTimestamp fromUnixTimestampInJodaSyntax fromUTCTimestamp hop hopEnd hopStart localtime makeDate
    makeDate32 makeDateTime makeDateTime64 monthName now now64 nowInBlock nowInBlock64 subDate subtractDays
    subtractHours subtractInterval subtractMicroseconds subtractMilliseconds subtractMinutes subtractMonths
    subtractNanoseconds subtractQuarters subtractSeconds subtractTupleOfIntervals subtractWeeks subtractYears
    timeDiff timeSlot timeSlots timestamp timezoneOf timezoneOffset today toDayOfMonth toDayOfWeek toDayOfYear
    toDaysInMonth toDaysSinceYearZero toHour toISOWeek toISOYear toLastDayOfMonth toLastDayOfWeek toMicrosecond
    toMillisecond toMinute toModifiedJulianDay toModifiedJulianDayOrNull toMonday toMonth toMonthNumSinceEpoch
    toNanosecond toQuarter toRelativeDayNum toRelativeHourNum toRelativeMinuteNum toRelativeMonthNum
    toRelativeQuarterNum toRelativeSecondNum toRelativeWeekNum toRelativeYearNum toSecond toStartOfDay
    toStartOfFifteenMinutes toStartOfFiveMinutes toStartOfHour toStartOfInterval toStartOfISOYear
    toStartOfMicrosecond toStartOfMillisecond toStartOfMinute toStartOfMonth toStartOfNanosecond
    toStartOfQuarter toStartOfSecond toStartOfTenMinutes toStartOfWeek toStartOfYear toTimeWithFixedDate
    toTimezone toUnixTimestamp toUTCTimestamp toWeek toYear toYearNumSinceEpoch toYearWeek toYYYYMM toYYYYMMDD
    toYYYYMMDDhhmmss tumble tumbleEnd tumbleStart UTCTimestamp yesterday YYYYMMDDhhmmssToDateTime
    YYYYMMDDhhmmssToDateTime64 YYYYMMDDToDate YYYYMMDDToDate32
    """
)

# JSON: parsing JSON held in strings (JSONExtract*, simpleJSON*, JSON_VALUE, ...).
JSON = _names(
    """
    dynamicElement dynamicType isDynamicElementInSharedData isValidJSON JSON_EXISTS JSON_QUERY JSON_VALUE
    JSONAllPaths JSONAllPathsWithTypes JSONAllValues JSONArrayLength JSONDynamicPaths JSONDynamicPathsWithTypes
    JSONExtract JSONExtractArrayRaw JSONExtractArrayRawCaseInsensitive JSONExtractBool
    JSONExtractBoolCaseInsensitive JSONExtractCaseInsensitive JSONExtractFloat JSONExtractFloatCaseInsensitive
    JSONExtractInt JSONExtractIntCaseInsensitive JSONExtractKeys JSONExtractKeysAndValues
    JSONExtractKeysAndValuesCaseInsensitive JSONExtractKeysAndValuesRaw
    JSONExtractKeysAndValuesRawCaseInsensitive JSONExtractKeysCaseInsensitive JSONExtractRaw
    JSONExtractRawCaseInsensitive JSONExtractString JSONExtractStringCaseInsensitive JSONExtractUInt
    JSONExtractUIntCaseInsensitive JSONHas JSONKey JSONLength JSONMergePatch JSONSharedDataPaths
    JSONSharedDataPathsWithTypes JSONType prettyPrintJSON simpleJSONExtractBool simpleJSONExtractFloat
    simpleJSONExtractInt simpleJSONExtractRaw simpleJSONExtractString simpleJSONExtractUInt simpleJSONHas
    toJSONString
    """
)

# Arrays, including the higher-order ones that take lambdas (arrayMap,
# arrayFilter, arrayFold) and arrayReduce, whose aggregate is named in a string
# and goes through this allowlist too (dashboard.sqlindirect).
ARRAYS = _names(
    """
    array arrayAll arrayAUCPR arrayAutocorrelation arrayAvg arrayBottomK arrayCompact arrayConcat arrayCount
    arrayCumSum arrayCumSumNonNegative arrayDifference arrayDistinct arrayDotProduct arrayElement
    arrayElementOrNull arrayEnumerate arrayEnumerateDense arrayEnumerateDenseRanked arrayEnumerateUniq
    arrayEnumerateUniqRanked arrayExcept arrayExists arrayFill arrayFilter arrayFirst arrayFirstIndex
    arrayFirstOrNull arrayFlatten arrayFlattenedLength arrayFold arrayIntersect arrayJaccardIndex arrayJoin
    arrayLast arrayLastIndex arrayLastOrNull arrayLevenshteinDistance arrayLevenshteinDistanceWeighted arrayMap
    arrayMax arrayMin arrayNormalizedGini arrayPartialReverseSort arrayPartialShuffle arrayPartialSort
    arrayPopBack arrayPopFront arrayProduct arrayPushBack arrayPushFront arrayRandomSample arrayReduce
    arrayReduceInRanges arrayRemove arrayResize arrayReverse arrayReverseFill arrayReverseSort arrayReverseSplit
    arrayROCAUC arrayRotateLeft arrayRotateRight arrayShiftLeft arrayShiftRight arrayShingles arrayShuffle
    arraySimilarity arraySlice arraySort arraySplit arraySum arraySymmetricDifference arrayTopK arrayTranspose
    arrayUnion arrayUniq arrayWithConstant arrayZip arrayZipUnaligned countEqual empty emptyArrayDate
    emptyArrayDateTime emptyArrayFloat32 emptyArrayFloat64 emptyArrayInt16 emptyArrayInt32 emptyArrayInt64
    emptyArrayInt8 emptyArrayString emptyArrayToSingle emptyArrayUInt16 emptyArrayUInt32 emptyArrayUInt64
    emptyArrayUInt8 has hasAll hasAny hasSubstr indexOf indexOfAssumeSorted length notEmpty notHas
    randomHadamardTransform range replicate reverse
    """
)

# Tuple and Map: tuple(), tupleElement (t.1), map(), mapKeys, ...
TUPLES_MAPS = _names(
    """
    dotProduct extractKeyValuePairs extractKeyValuePairsWithEscaping flattenTuple map mapAdd mapAll mapApply
    mapConcat mapContainsKey mapContainsKeyLike mapContainsValue mapContainsValueLike mapExists
    mapExtractKeyLike mapExtractValueLike mapFilter mapFromArrays mapKeys mapPartialReverseSort mapPartialSort
    mapPopulateSeries mapReverseSort mapSort mapSubtract mapUpdate mapValues tuple tupleConcat tupleDivide
    tupleDivideByNumber tupleElement tupleHammingDistance tupleIntDiv tupleIntDivByNumber tupleIntDivOrZero
    tupleIntDivOrZeroByNumber tupleMinus tupleModulo tupleModuloByNumber tupleMultiply tupleMultiplyByNumber
    tupleNames tupleNegate tuplePlus tuplePositiveModuloByNumber tupleToNameValuePairs
    """
)

# Type Conversion: CAST (and x::T), toString, toDateTime64, parseDateTime*,
# toInterval* (what INTERVAL 1 DAY parses to), reinterpret*. Out: formatRow and
# formatRowNoNewline (output formats, as groupFormat above), kqlParameterCast and
# kqlToTimespan (Kusto dialect).
CONVERSION = _names(
    """
    accurateCast accurateCastOrDefault accurateCastOrNull CAST DATE fromUnixTimestamp64Micro
    fromUnixTimestamp64Milli fromUnixTimestamp64Nano fromUnixTimestamp64Second parseDateTime
    parseDateTime32BestEffort parseDateTime32BestEffortOrNull parseDateTime32BestEffortOrZero parseDateTime64
    parseDateTime64BestEffort parseDateTime64BestEffortOrNull parseDateTime64BestEffortOrZero
    parseDateTime64BestEffortUS parseDateTime64BestEffortUSOrNull parseDateTime64BestEffortUSOrZero
    parseDateTime64InJodaSyntax parseDateTime64InJodaSyntaxOrNull parseDateTime64InJodaSyntaxOrZero
    parseDateTime64OrNull parseDateTime64OrZero parseDateTimeBestEffort parseDateTimeBestEffortOrNull
    parseDateTimeBestEffortOrZero parseDateTimeBestEffortUS parseDateTimeBestEffortUSOrNull
    parseDateTimeBestEffortUSOrZero parseDateTimeInJodaSyntax parseDateTimeInJodaSyntaxOrNull
    parseDateTimeInJodaSyntaxOrZero parseDateTimeOrNull parseDateTimeOrZero reinterpret reinterpretAsDate
    reinterpretAsDateTime reinterpretAsFixedString reinterpretAsFloat32 reinterpretAsFloat64 reinterpretAsInt128
    reinterpretAsInt16 reinterpretAsInt256 reinterpretAsInt32 reinterpretAsInt64 reinterpretAsInt8
    reinterpretAsString reinterpretAsUInt128 reinterpretAsUInt16 reinterpretAsUInt256 reinterpretAsUInt32
    reinterpretAsUInt64 reinterpretAsUInt8 reinterpretAsUUID toBFloat16 toBFloat16OrNull toBFloat16OrZero toBool
    toDate toDate32 toDate32OrDefault toDate32OrNull toDate32OrZero toDateOrDefault toDateOrNull toDateOrZero
    toDateTime toDateTime32 toDateTime64 toDateTime64OrDefault toDateTime64OrNull toDateTime64OrZero
    toDateTimeOrDefault toDateTimeOrNull toDateTimeOrZero toDecimal128 toDecimal128OrDefault toDecimal128OrNull
    toDecimal128OrZero toDecimal256 toDecimal256OrDefault toDecimal256OrNull toDecimal256OrZero toDecimal32
    toDecimal32OrDefault toDecimal32OrNull toDecimal32OrZero toDecimal64 toDecimal64OrDefault toDecimal64OrNull
    toDecimal64OrZero toDecimalString toFixedString toFloat32 toFloat32OrDefault toFloat32OrNull toFloat32OrZero
    toFloat64 toFloat64OrDefault toFloat64OrNull toFloat64OrZero toInt128 toInt128OrDefault toInt128OrNull
    toInt128OrZero toInt16 toInt16OrDefault toInt16OrNull toInt16OrZero toInt256 toInt256OrDefault
    toInt256OrNull toInt256OrZero toInt32 toInt32OrDefault toInt32OrNull toInt32OrZero toInt64 toInt64OrDefault
    toInt64OrNull toInt64OrZero toInt8 toInt8OrDefault toInt8OrNull toInt8OrZero toInterval toIntervalDay
    toIntervalHour toIntervalMicrosecond toIntervalMillisecond toIntervalMinute toIntervalMonth
    toIntervalNanosecond toIntervalQuarter toIntervalSecond toIntervalWeek toIntervalYear toLowCardinality
    toString toStringCutToZero toTime toTime64 toTime64OrNull toTime64OrZero toTimeOrNull toTimeOrZero toUInt128
    toUInt128OrDefault toUInt128OrNull toUInt128OrZero toUInt16 toUInt16OrDefault toUInt16OrNull toUInt16OrZero
    toUInt256 toUInt256OrDefault toUInt256OrNull toUInt256OrZero toUInt32 toUInt32OrDefault toUInt32OrNull
    toUInt32OrZero toUInt64 toUInt64OrDefault toUInt64OrNull toUInt64OrZero toUInt8 toUInt8OrDefault
    toUInt8OrNull toUInt8OrZero toUnixTimestamp64Micro toUnixTimestamp64Milli toUnixTimestamp64Nano
    toUnixTimestamp64Second toUUID toUUIDOrZero
    """
)

# Hash: cityHash64, sipHash64, MD5, SHA256, xxHash64, ... over values only.
HASHES = _names(
    """
    cityHash64 farmFingerprint64 farmHash64 gccMurmurHash halfMD5 hiveHash icebergHash intHash32 intHash64
    javaHash javaHashUTF16LE jumpConsistentHash kafkaMurmurHash keccak256 kostikConsistentHash MD4 MD5
    metroHash64 murmurHash2_32 murmurHash2_64 murmurHash3_128 murmurHash3_32 murmurHash3_64 ngramMinHash
    ngramMinHashArg ngramMinHashArgCaseInsensitive ngramMinHashArgCaseInsensitiveUTF8 ngramMinHashArgUTF8
    ngramMinHashCaseInsensitive ngramMinHashCaseInsensitiveUTF8 ngramMinHashUTF8 ngramSimHash
    ngramSimHashCaseInsensitive ngramSimHashCaseInsensitiveUTF8 ngramSimHashUTF8 RIPEMD160 SHA1 SHA224 SHA256
    SHA384 SHA512 SHA512_256 sipHash128 sipHash128Keyed sipHash128Reference sipHash128ReferenceKeyed sipHash64
    sipHash64Keyed URLHash wordShingleMinHash wordShingleMinHashArg wordShingleMinHashArgCaseInsensitive
    wordShingleMinHashArgCaseInsensitiveUTF8 wordShingleMinHashArgUTF8 wordShingleMinHashCaseInsensitive
    wordShingleMinHashCaseInsensitiveUTF8 wordShingleMinHashUTF8 wordShingleSimHash
    wordShingleSimHashCaseInsensitive wordShingleSimHashCaseInsensitiveUTF8 wordShingleSimHashUTF8 wyHash64 xxh3
    xxh3_128 xxHash32 xxHash64 xxHash64Spark
    """
)

# URL, IP Address and UUID: parsing and formatting only; none of them resolves a
# name or opens a connection.
IDENTIFIERS = _names(
    """
    cutFragment cutIPv6 cutQueryString cutQueryStringAndFragment cutToFirstSignificantSubdomain
    cutToFirstSignificantSubdomainCustom cutToFirstSignificantSubdomainCustomRFC
    cutToFirstSignificantSubdomainCustomWithWWW cutToFirstSignificantSubdomainCustomWithWWWRFC
    cutToFirstSignificantSubdomainRFC cutToFirstSignificantSubdomainWithWWW
    cutToFirstSignificantSubdomainWithWWWRFC cutURLParameter cutWWW dateTime64ToSnowflakeID
    dateTimeToSnowflakeID dateTimeToUUIDv7 decodeURLComponent decodeURLFormComponent domain domainRFC
    domainWithoutWWW domainWithoutWWWRFC encodeURLComponent encodeURLFormComponent extractURLParameter
    extractURLParameterNames extractURLParameters firstSignificantSubdomain firstSignificantSubdomainCustom
    firstSignificantSubdomainCustomRFC firstSignificantSubdomainRFC fragment generateSnowflakeID generateUUIDv4
    generateUUIDv7 IPv4CIDRToRange IPv4NumToString IPv4NumToStringClassC IPv4StringToNum
    IPv4StringToNumOrDefault IPv4StringToNumOrNull IPv4ToIPv6 IPv6CIDRToRange IPv6NumToString IPv6StringToNum
    IPv6StringToNumOrDefault IPv6StringToNumOrNull isIPAddressInRange isIPv4String isIPv6String netloc path
    pathFull port portRFC protocol queryString queryStringAndFragment snowflakeIDToDateTime
    snowflakeIDToDateTime64 toIPv4 toIPv4OrDefault toIPv4OrNull toIPv4OrZero toIPv6 toIPv6OrDefault toIPv6OrNull
    toIPv6OrZero topLevelDomain topLevelDomainRFC toUUIDOrDefault toUUIDOrNull URLHierarchy URLPathHierarchy
    UUIDNumToString UUIDStringToNum UUIDToNum UUIDv7ToDateTime
    """
)

# Random Number: rand(), randomString(), ... (bounded by the memory limit).
RANDOM = _names(
    """
    fuzzBits rand rand64 randBernoulli randBinomial randCanonical randChiSquared randConstant randExponential
    randFisherF randLogNormal randNegativeBinomial randNormal randomFixedString randomPrintableASCII
    randomString randomStringUTF8 randPoisson randStudentT randUniform
    """
)

# Geo, Geo Polygon, Distance and Bitmap: arithmetic on coordinates, vectors and
# bitmaps (regions carry latitude and longitude: greatCircleDistance).
GEOMETRY = _names(
    """
    areaCartesian areaSpherical bitmapAnd bitmapAndCardinality bitmapAndnot bitmapAndnotCardinality bitmapBuild
    bitmapCardinality bitmapContains bitmapHasAll bitmapHasAny bitmapMax bitmapMin bitmapOr bitmapOrCardinality
    bitmapSubsetInRange bitmapSubsetLimit bitmapToArray bitmapTransform bitmapXor bitmapXorCardinality
    cosineDistance cosineDistanceTransposed cosineDistanceTransposedQuantized dotProductTransposed
    dotProductTransposedQuantized geoDistance geohashDecode geohashEncode geohashesInBox
    geometryIntersectCartesian geometryIntersectSpherical geoToH3 geoToMGRS geoToUTM greatCircleAngle
    greatCircleDistance h3CellAreaM2 h3CellAreaRads2 h3Distance h3EdgeAngle h3EdgeLengthKm h3EdgeLengthM
    h3ExactEdgeLengthKm h3ExactEdgeLengthM h3ExactEdgeLengthRads h3GetBaseCell
    h3GetDestinationIndexFromUnidirectionalEdge h3GetFaces h3GetIndexesFromUnidirectionalEdge
    h3GetOriginIndexFromUnidirectionalEdge h3GetPentagonIndexes h3GetRes0Indexes h3GetResolution
    h3GetUnidirectionalEdge h3GetUnidirectionalEdgeBoundary h3GetUnidirectionalEdgesFromHexagon h3HexAreaKm2
    h3HexAreaM2 h3HexRing h3IndexesAreNeighbors h3IsPentagon h3IsResClassIII h3IsValid h3kRing h3Line
    h3NumHexagons h3PointDistKm h3PointDistM h3PointDistRads h3PolygonToCells h3PolygonToCellsWithContainment
    h3ToCenterChild h3ToChildren h3ToGeo h3ToGeoBoundary h3ToParent h3ToString h3UnidirectionalEdgeIsValid
    L1Distance L1Norm L1Normalize L2Distance L2DistanceTransposed L2DistanceTransposedQuantized L2Norm
    L2Normalize L2SquaredDistance L2SquaredNorm LinfDistance LinfNorm LinfNormalize LpDistance LpNorm
    LpNormalize MGRSToGeo MVTBoundingBox MVTBoundingBoxMercator MVTEncode MVTEncodeGeom perimeterCartesian
    perimeterSpherical pointInEllipses pointInPolygon polygonAreaCartesian polygonAreaSpherical
    polygonConvexHullCartesian polygonPerimeterCartesian polygonPerimeterSpherical polygonsDistanceCartesian
    polygonsDistanceSpherical polygonsEqualsCartesian polygonsIntersectCartesian polygonsIntersectionCartesian
    polygonsIntersectionSpherical polygonsIntersectSpherical polygonsSymDifferenceCartesian
    polygonsSymDifferenceSpherical polygonsUnionCartesian polygonsUnionSpherical polygonsWithinCartesian
    polygonsWithinSpherical readWKB readWKBLineString readWKBMultiLineString readWKBMultiPoint
    readWKBMultiPolygon readWKBPoint readWKBPolygon readWKT readWKTLineString readWKTMultiLineString
    readWKTMultiPoint readWKTMultiPolygon readWKTPoint readWKTPolygon readWKTRing stringToH3 subBitmap svg
    UTMToGeo wkb wkt
    """
)

# Hand-picked from Other: formatting (bar, formatReadableSize, ...), type and
# block introspection of the query's own values (toTypeName, blockSize,
# rowNumberInAllBlocks, neighbor, runningDifference), aggregate-state helpers and
# transform (what CASE x WHEN ... often becomes). Everything else in Other reads
# the session, the host, the server's settings or files, or sleeps or throws.
OTHER = _names(
    """
    bar blockNumber blockSize byteSize colorOKLABToSRGB colorOKLCHToSRGB colorSRGBToOKLAB colorSRGBToOKLCH
    countDigits defaultValueOfArgumentType defaultValueOfTypeName errorCodeToName finalizeAggregation
    flipCoordinates formatReadableDecimalSize formatReadableQuantity formatReadableSize formatReadableTimeDelta
    getSizeOfEnumType getSubcolumn identity ignore indexHint initializeAggregation isConstant isDecimalOverflow
    lowCardinalityIndices lowCardinalityKeys MACNumToString MACStringToNum MACStringToOUI materialize
    minSampleSizeContinuous minSampleSizeConversion neighbor parseISO8601Duration parseReadableSize
    parseReadableSizeOrNull parseReadableSizeOrZero parseTimeDelta rowNumberInAllBlocks rowNumberInBlock
    runningAccumulate runningDifference runningDifferenceStartingWithFirstValue toColumnTypeName toTypeName
    transform variantElement variantType visibleWidth
    """
)

# Other spellings of the functions above (SQL standard, MySQL, PostgreSQL):
# ClickHouse lists them without a category. Left out with their targets:
# DATABASE, SCHEMA, user, current_user, session_user, hostname, fullHostName,
# query_id, timeZone, serverTimeZone, the AI* spellings, partitionID, ...
ALIASES = _names(
    """
    array_remove array_to_string arrayAUC arrayPRAUC byteSlice CARDINALITY caseWithExpr caseWithoutExpr
    caseWithoutExpression ceiling CHAR_LENGTH CHARACTER_LENGTH concat_ws curdate current_date current_timestamp
    date_bin date_diff DATE_DIFF DATE_FORMAT DATE_TRUNC DAY DAYOFMONTH DAYOFWEEK DAYOFYEAR distanceCosine
    distanceCosineTransposed distanceL1 distanceL2 distanceL2Squared distanceL2Transposed distanceLinf
    distanceLp extractAllGroups flatten FORMAT_BYTES FROM_BASE64 FROM_DAYS FROM_UNIXTIME from_utc_timestamp
    hasAllToken hasAnyToken HOUR INET6_ATON INET6_NTOA INET_ATON INET_NTOA instr isASCII JSON_ARRAY_LENGTH
    jsonMergePatch LAST_DAY lcase levenshteinDistance levenshteinDistanceUTF8 ln localtimestamp lpad ltrim
    MAP_FROM_ARRAYS mapContains mapFromString matchPhrase MICROSECOND mid MILLISECOND minSampleSizeContinous
    MINUTE mismatches mod modOrNull MONTH NANOSECOND NATURAL_SORT_KEY normalizeL1 normalizeL2 normalizeLinf
    normalizeLp normL1 normL2 normL2Squared normLinf normLp OCTET_LENGTH pmod pmodOrNull positive_modulo
    positive_modulo_or_null power QUARTER rand32 readWkb readWkt REGEXP_EXTRACT regexp_instr REGEXP_MATCHES
    REGEXP_REPLACE REGEXP_SUBSTR regexpInstr removeAccentsUTF8 replace rpad rtrim scalarProduct
    scalarProductTransposed SECOND splitByAlpha sqid ST_AsMVTGeom ST_LineFromWKB ST_MLineFromWKB
    ST_MPointFromWKB ST_MPolyFromWKB ST_PointFromWKB ST_PolyFromWKB str_to_date str_to_map substr
    SUBSTRING_INDEX SVG time_bucket timestamp_diff TIMESTAMP_DIFF timestampDiff timeZoneOf timeZoneOffset
    TO_BASE64 TO_DAYS TO_UNIXTIME to_utc_timestamp toStartOfFiveMinute toTimeZone trim truncate ucase unnest
    UTC_timestamp vectorDifference vectorSum visitParamExtractBool visitParamExtractFloat visitParamExtractInt
    visitParamExtractRaw visitParamExtractString visitParamExtractUInt visitParamHas week width_bucket WKB WKT
    yandexConsistentHash YEAR yearweek
    """
)

# Functions the parser produces that system.functions does not list: a -> b is
# lambda(tuple(a), b), EXISTS (...) is exists, GROUPING(...) is grouping, and
# CASE x WHEN ... is caseWithExpression.
PARSER = _names("lambda exists grouping caseWithExpression")

# Combinators an aggregate may carry, longest first so that MergeState is tried
# before State and Merge.
COMBINATORS = (
    "MergeState",
    "SimpleState",
    "OrDefault",
    "Resample",
    "Distinct",
    "ForEach",
    "OrNull",
    "ArgMin",
    "ArgMax",
    "State",
    "Merge",
    "Array",
    "Map",
    "If",
)

# Table functions that read nothing but their arguments: row generators and
# literal rows. Every other table function (file, url, s3, remote, cluster,
# merge, input, view, python, ...) reads something outside the query.
TABLE_FUNCTIONS = frozenset(
    ("numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries", "values")
)

# The IN operators (x IN t, x GLOBAL NOT IN t, ...), whose right side may name a table.
IN_FUNCTIONS = frozenset(
    f"{scope}{negation}{nulls}in{ignore}".lower()
    for scope in ("", "global")
    for negation in ("", "not")
    for nulls in ("", "null")
    for ignore in ("", "IgnoreSet")
)

# Function names the analyser itself writes into EXPLAIN QUERY TREE: _CAST for
# the casts it adds, the helpers of scalar subqueries, and what GROUPING(...)
# becomes. Allowed there only: the parse (EXPLAIN AST) never lets a user call them.
ANALYSER_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "_CAST",
        "__getScalar",
        "__scalarSubqueryResult",
        "__actionName",
        "__groupingForGroupingSets",
        "__groupingForRollup",
        "__groupingForCube",
        "__groupingOrdinary",
    )
)

_AGGREGATES = frozenset(name.lower() for name in AGGREGATE)
_ALLOWED = frozenset(
    name.lower()
    for group in (
        AGGREGATE,
        NUMBERS,
        LOGIC,
        STRINGS,
        DATES,
        JSON,
        ARRAYS,
        TUPLES_MAPS,
        CONVERSION,
        HASHES,
        IDENTIFIERS,
        RANDOM,
        GEOMETRY,
        OTHER,
        ALIASES,
        PARSER,
    )
    for name in group
)
_COMBINATORS = tuple(c.lower() for c in COMBINATORS)


def is_allowed_function(name: str) -> bool:
    """Whether a query may call the (ordinary or aggregate) function ``name``, in any case."""
    low = name.lower()
    return low in _ALLOWED or _is_combined_aggregate(low, depth=0)


def is_allowed_aggregate(name: str) -> bool:
    """Whether ``name`` (in any case) is an allowed aggregate function, with or without combinators."""
    low = name.lower()
    return low in _AGGREGATES or _is_combined_aggregate(low, depth=0)


def _is_combined_aggregate(low: str, depth: int) -> bool:
    # an aggregate with one or more combinators: sumIf, uniqArrayIf, quantilesMergeState
    if depth > 4:
        return False
    for suffix in _COMBINATORS:
        if low.endswith(suffix) and len(low) > len(suffix):
            base = low[: -len(suffix)]
            if base in _AGGREGATES or _is_combined_aggregate(base, depth + 1):
                return True
    return False


def is_allowed_table_function(name: str) -> bool:
    """Whether a query may read from the table function ``name`` (in FROM, JOIN or DESCRIBE)."""
    return name.lower() in TABLE_FUNCTIONS
