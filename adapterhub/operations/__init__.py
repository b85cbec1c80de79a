"""Operations over stored versions that create new ones: combine, compose, extract, export."""
