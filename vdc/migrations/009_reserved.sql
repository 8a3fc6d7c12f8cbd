-- Reserved: migration 009 belongs to another change (merged separately). tern
-- needs consecutive numbers, so this empty placeholder lets 010 apply until then;
-- delete this file when the real 009 lands.
SELECT 1;
